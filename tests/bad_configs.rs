//! The bad-input corpus: every file in `tests/bad_configs/` is a config lbd
//! must refuse with a message naming the problem and its place, never a
//! panic, a hang or a flood of output.
//!
//! Each `NAME.toml` has a `NAME.expect` beside it:
//!
//! ```text
//! # why this case exists (comment lines start with #)
//! 8:11: the start of the message expected at line 8, column 11
//! file: a message about the whole file (no line to point at)
//! ```
//!
//! Every expectation line must match one problem in the output, which is
//! checked both through `Config::load` and through `lbd --check-config`
//! (exit status 1, nothing on stdout, the same text on stderr). Cases too
//! big to keep in git (a 17 MiB file, a megabyte-long line) are generated.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use lbd::config::{Config, ConfigError, MAX_FILE_BYTES};
use support::TempDir;

/// Widest excerpt line of the error output: 120 characters of source, two
/// `…` marks and the gutter. A longer one means a source line leaked whole.
const MAX_EXCERPT_LINE: usize = 140;

/// Widest headline after the file name: a message quoting values of at most
/// 64 characters. A longer one means a value from the file leaked whole.
const MAX_HEADLINE: usize = 300;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_configs")
}

/// The corpus's `.toml` files, sorted, each with its `.expect` contents.
fn corpus() -> Vec<(PathBuf, String)> {
    let mut cases: Vec<(PathBuf, String)> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .map(|path| {
            let expect = std::fs::read_to_string(path.with_extension("expect"))
                .unwrap_or_else(|e| panic!("{}: no .expect beside it: {e}", path.display()));
            (path, expect)
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 100, "the corpus shrank to {}", cases.len());
    cases
}

/// `Config::load`, turning a panic into a test failure that names the file.
fn load_rejects(path: &Path) -> ConfigError {
    let loaded = std::panic::catch_unwind(|| Config::load(path));
    match loaded {
        Err(_) => panic!("{}: Config::load panicked", path.display()),
        Ok(Ok(_)) => panic!("{}: accepted, but it is in the bad corpus", path.display()),
        Ok(Err(err)) => err,
    }
}

/// Checks `rendered` (the whole error text) against one `.expect` file.
fn check_expectations(path: &Path, expect: &str, rendered: &str) {
    let shown = path.display().to_string();
    let mut expectations = 0;
    for line in expect
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        expectations += 1;
        let (place, message) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("{shown}.expect: malformed line {line:?}"));
        let prefix = if place == "file" {
            format!("{shown}: {message}")
        } else {
            format!("{shown}:{place}: {message}")
        };
        assert!(
            rendered.lines().any(|l| l.starts_with(&prefix)),
            "{shown}: expected a line starting with\n  {prefix}\ngot:\n{rendered}"
        );
    }
    assert!(expectations > 0, "{shown}.expect expects nothing");
    assert!(
        rendered.starts_with(&shown),
        "{shown}: output does not start with the file name:\n{rendered}"
    );
    // Headlines quote values cut short; excerpts show a window of the line.
    let too_wide = |l: &&str| match l.strip_prefix(&shown) {
        Some(headline) => headline.chars().count() > MAX_HEADLINE,
        None => l.chars().count() > MAX_EXCERPT_LINE,
    };
    if let Some(wide) = rendered.lines().find(too_wide) {
        panic!(
            "{shown}: an output line is {} characters wide: {:.200}",
            wide.chars().count(),
            wide
        );
    }
}

#[test]
fn config_load_rejects_every_corpus_file_with_its_place() {
    for (path, expect) in corpus() {
        let err = load_rejects(&path);
        check_expectations(&path, &expect, &err.to_string());
    }
}

#[test]
fn check_config_prints_the_same_errors_and_exits_1() {
    for (path, expect) in corpus() {
        let out = Command::new(env!("CARGO_BIN_EXE_lbd"))
            .arg("--check-config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: lbd --check-config ended with {} (a panic exits 101, a crash has no code):\n{stderr}",
            path.display(),
            out.status
        );
        assert!(
            out.stdout.is_empty(),
            "{}: printed to stdout",
            path.display()
        );
        assert_eq!(
            stderr.trim_end(),
            load_rejects(&path).to_string(),
            "{}",
            path.display()
        );
        check_expectations(&path, &expect, &stderr);
    }
}

#[test]
fn every_expect_file_has_its_config() {
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "expect") {
            assert!(
                path.with_extension("toml").exists(),
                "{} has no .toml",
                path.display()
            );
        }
    }
}

#[test]
fn a_file_over_the_size_limit_is_refused_unread() {
    let dir = TempDir::new("huge");
    let path = dir.0.join("huge.toml");
    let line = format!("# {}\n", "x".repeat(1021));
    let body = line.repeat((MAX_FILE_BYTES as usize / line.len()) + 2);
    std::fs::write(&path, body).unwrap();
    let err = load_rejects(&path);
    let shown = err.to_string();
    assert!(shown.contains("larger than 16 MiB"), "{shown}");
    assert!(shown.starts_with(&path.display().to_string()), "{shown}");
}

#[test]
fn an_endless_file_is_refused_at_the_size_limit() {
    let err = load_rejects(Path::new("/dev/zero"));
    assert!(err.to_string().contains("larger than 16 MiB"), "{err}");
}

#[test]
fn a_missing_file_and_a_directory_are_read_errors_naming_the_path() {
    let dir = TempDir::new("read");
    let missing = dir.0.join("nope.toml");
    for (path, words) in [
        (missing.as_path(), "No such file"),
        (dir.0.as_path(), "Is a directory"),
    ] {
        let shown = load_rejects(path).to_string();
        assert!(
            shown.starts_with(&format!("{}: cannot read config: ", path.display())),
            "{shown}"
        );
        assert!(shown.contains(words), "{shown}");
    }
}

#[test]
fn a_megabyte_line_of_mistakes_is_reported_briefly() {
    // 100 000 bad listen entries on one line: every problem shares that line.
    let entries = vec!["\"bad\""; 100_000].join(",");
    let text = format!(
        "[[frontend]]\nname = \"api\"\nlisten = [{entries}]\nbackend = \"cp\"\n\n\
         [[backend]]\nname = \"cp\"\nservers = [{{ address = \"10.0.0.11:6443\" }}]\n"
    );
    let dir = TempDir::new("wide");
    let path = dir.write("wide.toml", &text);
    let err = load_rejects(&path);
    let shown = err.to_string();
    check_expectations(
        &path,
        "3:11: listen address \"bad\" is not IP:PORT\nfile: 99950 more problems not listed",
        &shown,
    );
    assert!(shown.len() < 64 * 1024, "{} bytes of errors", shown.len());
}

#[test]
fn a_100_kib_health_path_is_refused_without_being_quoted() {
    let text = format!(
        "[[frontend]]\nname = \"api\"\nlisten = [\"127.0.0.1:6443\"]\nbackend = \"cp\"\n\n\
         [[backend]]\nname = \"cp\"\nservers = [{{ address = \"10.0.0.11:6443\" }}]\n\
         [backend.health]\ncheck = \"https\"\npath = \"/readyz?{}\"\n",
        "x".repeat(100 * 1024)
    );
    let dir = TempDir::new("long-path");
    let path = dir.write("long-path.toml", &text);
    let expect = "11:8: health `path` is 102408 bytes long; at most 2048 are allowed";
    check_expectations(&path, expect, &load_rejects(&path).to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_lbd"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    check_expectations(&path, expect, &String::from_utf8_lossy(&out.stderr));
}

#[test]
fn windows_line_endings_and_a_bom_are_accepted() {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lbd.toml"))
            .unwrap();
    let dir = TempDir::new("crlf");
    for (name, text) in [
        ("crlf.toml", shipped.replace('\n', "\r\n")),
        ("bom.toml", format!("\u{feff}{shipped}")),
    ] {
        let path = dir.write(name, &text);
        if let Err(err) = Config::load(&path) {
            panic!("{name} does not load:\n{err}");
        }
    }
}

#[test]
fn sixty_thousand_listen_addresses_are_checked_for_clashes() {
    // Each address is checked against all before it: an index, not a scan.
    let listen: Vec<String> = (1..=60_000)
        .map(|port| format!("\"127.0.0.1:{port}\""))
        .chain(["\"0.0.0.0:59999\"".to_owned()])
        .collect();
    let text = format!(
        "[admin]\nlisten = \"unix:/run/lbd/admin.sock\"\n\n\
         [[frontend]]\nname = \"api\"\nbackend = \"cp\"\nlisten = [{}]\n\n\
         [[backend]]\nname = \"cp\"\nservers = [{{ address = \"10.0.0.11:6443\" }}]\n",
        listen.join(",")
    );
    let dir = TempDir::new("binds");
    let path = dir.write("binds.toml", &text);
    let shown = load_rejects(&path).to_string();
    let column = text
        .lines()
        .nth(6)
        .unwrap()
        .find("\"0.0.0.0:59999\"")
        .unwrap()
        + 1;
    check_expectations(
        &path,
        &format!("7:{column}: listen address 0.0.0.0:59999 clashes with 127.0.0.1:59999"),
        &shown,
    );
}
