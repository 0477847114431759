//! Every shipped config loads, and `--check-config` explains bad files with
//! their line and column.

mod support;

use std::path::Path;
use std::process::Command;

use lbd::config::Config;
use support::TempDir;

#[test]
fn every_file_in_config_loads() {
    let mut checked = 0;
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("config")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                if let Err(err) = Config::load(&path) {
                    panic!("{} does not load:\n{err}", path.display());
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 2,
        "expected the shipped configs, found {checked}"
    );
}

fn check_config(contents: &str) -> (bool, String, String) {
    let dir = TempDir::new("check");
    let path = dir.write("lbd.toml", contents);
    let out = Command::new(env!("CARGO_BIN_EXE_lbd"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_a_good_file_with_a_summary() {
    let good =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lbd.toml"))
            .unwrap();
    let (ok, stdout, _) = check_config(&good);
    assert!(ok);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("OK: 1 frontend (1 listener), 1 backend, 3 servers"),
        "{stdout}"
    );
}

#[test]
fn check_config_names_the_line_of_each_mistake() {
    let cases = [
        // (file, expected "lbd.toml:LINE:COL", expected words)
        (
            "[[frontend]]\nname = \"a\"\nlisten = [\"0.0.0.0:6443\"]\nbackend = \"b\"\nbakend = 1\n",
            ":5:1:",
            "unknown field `bakend`",
        ),
        (
            "[[frontend]]\nname = \"a\"\nlisten = [\"0.0.0.0:6443\"]\nbackend = \"nope\"\n[[backend]]\nname = \"b\"\nservers = [{ address = \"10.0.0.1:6443\" }]\n",
            ":4:11:",
            "does not exist",
        ),
        (
            "[[frontend]]\nname = \"a\"\nlisten = [\"0.0.0.0:6443\"]\nbackend = \"b\"\n[[backend]]\nname = \"b\"\nconnect_timeout = \"2\"\nservers = [{ address = \"10.0.0.1:6443\" }]\n",
            ":7:19:",
            "lacks a unit",
        ),
        (
            "[[frontend]]\nname = \"a\"\nlisten = [\"0.0.0.0:6443\"]\nbackend = \"b\"\n[[backend]]\nname = \"b\"\nservers = [{ address = \"10.0.0.1:70000\" }]\n",
            ":7:24:",
            "expected a number from 1 to 65535",
        ),
        (
            "[[frontend]]\nname = \"a\"\nlisten = [\"0.0.0.0:6443\"]\nbackend = \"b\"\n[[backend]]\nname = \"b\"\nservers = []\n",
            ":7:11:",
            "has no servers",
        ),
        (
            "[[frontend]]\nname = \"a\"\nlisten = [\"0.0.0.0:6443\"]\nbackend = \"b\"\nmax_connections = 0\n[[backend]]\nname = \"b\"\nservers = [{ address = \"10.0.0.1:6443\" }]\n",
            ":5:19:",
            "out of range",
        ),
        (
            "[[frontend]]\nname = \"a\"\nlisten = [\"0.0.0.0:6443\"\n",
            ":3:",
            "unclosed array",
        ),
    ];
    for (file, place, words) in cases {
        let (ok, _, stderr) = check_config(file);
        assert!(!ok, "accepted:\n{file}");
        assert!(
            stderr.contains(&format!("lbd.toml{place}")),
            "want {place} for:\n{file}\ngot:\n{stderr}"
        );
        assert!(stderr.contains(words), "want {words:?}, got:\n{stderr}");
    }
}
