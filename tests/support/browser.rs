//! Debian's headless `chromium`, driven over the Chrome DevTools Protocol
//! on `--remote-debugging-pipe`: commands go in on the child's fd 3 and
//! answers come out on fd 4, one JSON message per NUL-terminated chunk. A
//! pipe needs no websocket client and no port, and only this test's
//! process can talk to the browser.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::TempDir;

/// Where Debian installs the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one protocol command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The flags every run uses: no network of its own (no updates, sync,
/// QUIC, or first-run pages), a fresh profile, no GPU, no sandbox (root in
/// CI).
pub fn flags(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ]
    .iter()
    .map(|f| (*f).to_owned())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

/// Whether the browser is here. Outside CI a missing browser skips the
/// test (with a message); in CI (`CI=true`) it fails it: `.ci/run`
/// installs it, so missing means broken.
pub fn available(test: &str) -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{CHROMIUM} is missing in CI: .ci/run should have installed the chromium package"
    );
    eprintln!("SKIPPED {test}: {CHROMIUM} is not installed (apt-get install chromium)");
    false
}

/// A running headless browser with one page attached.
pub struct Browser {
    child: Child,
    commands: std::fs::File,
    answers: Receiver<Value>,
    session: String,
    next_id: u64,
    profile: TempDir,
}

impl Browser {
    /// Starts chromium with a fresh profile and opens a blank page of
    /// `width`×`height` CSS pixels.
    pub fn start(width: u32, height: u32) -> Browser {
        let profile = TempDir::new("chromium");
        let (to_browser_read, to_browser_write) = pipe();
        let (from_browser_read, from_browser_write) = pipe();
        let (child_in, child_out) = (to_browser_read.as_raw_fd(), from_browser_write.as_raw_fd());
        let mut command = Command::new(CHROMIUM);
        command
            .args(flags(&profile.0))
            .arg("--remote-debugging-pipe")
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(profile.0.join("chromium.log")).unwrap());
        // SAFETY: only fcntl, dup2 and close, which are async-signal-safe,
        // run between fork and exec. The ends are first copied above 10, as
        // either may sit at 3 or 4 itself (dup2 onto itself would keep
        // close-on-exec, onto the other would close it); dup2 clears
        // close-on-exec on the copies at 3 and 4.
        unsafe {
            command.pre_exec(move || {
                let high_in = libc::fcntl(child_in, libc::F_DUPFD, 10);
                let high_out = libc::fcntl(child_out, libc::F_DUPFD, 10);
                if high_in < 0
                    || high_out < 0
                    || libc::dup2(high_in, 3) < 0
                    || libc::dup2(high_out, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(high_in);
                libc::close(high_out);
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium");
        drop((to_browser_read, from_browser_write));

        let (sender, answers) = channel();
        let reader = std::fs::File::from(from_browser_read);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop_if(|b| *b == 0);
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && sender.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        let mut browser = Browser {
            child,
            commands: std::fs::File::from(to_browser_write),
            answers,
            session: String::new(),
            next_id: 0,
            profile,
        };
        let target = browser.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser.resize(width, height, false);
        browser.command("Page.enable", json!({}));
        // Counts what the Content-Security-Policy blocked, from the start
        // of every document.
        browser.command(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": "window.__cspViolations = []; document.addEventListener('securitypolicyviolation', e => window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));" }),
        );
        browser
    }

    /// Sends a command to the page and returns its result.
    pub fn command(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        match self.try_call(session, method, params) {
            Ok(result) => result,
            Err(error) => panic!("{method} failed: {error}"),
        }
    }

    /// Sends a command; its result, or the protocol's error.
    fn try_call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        if let Err(error) = self.commands.write_all(&bytes) {
            panic!(
                "cannot send {method} to chromium ({error}):\n{}",
                self.log()
            );
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(left) {
                // Events (no id) and answers to other sessions are not ours.
                Ok(answer) if answer["id"] == id => {
                    return match answer.get("error") {
                        Some(error) => Err(error.clone()),
                        None => Ok(answer["result"].clone()),
                    };
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("chromium did not answer {method}:\n{}", self.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("chromium exited during {method}:\n{}", self.log())
                }
            }
        }
    }

    /// Gives the page a viewport of `width`×`height` CSS pixels; `mobile`
    /// also makes it lay out as a phone does (the viewport meta tag counts).
    pub fn resize(&mut self, width: u32, height: u32, mobile: bool) {
        self.command(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        );
    }

    /// What chromium wrote to stderr, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.profile.0.join("chromium.log")).unwrap_or_default()
    }

    /// Opens `url` in the page and waits until it has loaded.
    pub fn navigate(&mut self, url: &str) {
        let result = self.command("Page.navigate", json!({ "url": url }));
        assert!(
            result.get("errorText").is_none(),
            "navigate {url}: {result}"
        );
        let url_js = serde_json::to_string(url).unwrap();
        self.wait_for(
            COMMAND_TIMEOUT,
            &format!("{url} to load"),
            &format!("location.href === {url_js} && document.readyState === 'complete'"),
        );
    }

    /// Evaluates a JavaScript expression in the page and returns its value
    /// (promises awaited).
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.command(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is `true`. While a document is being
    /// replaced an evaluation may fail; that counts as not yet.
    pub fn wait_for(&mut self, within: Duration, what: &str, expression: &str) {
        let deadline = Instant::now() + within;
        let guarded = format!(
            "(() => {{ try {{ return ({expression}) === true; }} catch (e) {{ return false; }} }})()"
        );
        loop {
            let session = self.session.clone();
            let answer = self.try_call(
                Some(&session),
                "Runtime.evaluate",
                json!({ "expression": guarded, "returnByValue": true }),
            );
            if answer.is_ok_and(|a| a["result"]["value"] == json!(true)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}; the page reads:\n{}",
                self.eval("document.body ? document.body.innerText : ''")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clicks the middle of the element `selector` names with the mouse, as
    /// a user would (it must be visible and not covered).
    pub fn click(&mut self, selector: &str) {
        let selector_js = serde_json::to_string(selector).unwrap();
        let point = self.eval(&format!(
            "(() => {{ const e = document.querySelector({selector_js}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = match point.as_array().map(Vec::as_slice) {
            Some([x, y]) => (x.as_f64().unwrap(), y.as_f64().unwrap()),
            _ => panic!("nothing on the page matches {selector}"),
        };
        for kind in ["mousePressed", "mouseReleased"] {
            self.command(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            );
        }
    }

    /// Presses a key such as `Enter` or `Tab` on whatever has the focus.
    pub fn press(&mut self, key: &str, code: u32) {
        let text = if key == "Enter" { "\r" } else { "" };
        self.command(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyDown", "key": key, "code": key, "windowsVirtualKeyCode": code, "text": text }),
        );
        self.command(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyUp", "key": key, "code": key, "windowsVirtualKeyCode": code }),
        );
    }

    /// Types `text` into the focused element.
    pub fn type_text(&mut self, text: &str) {
        self.command("Input.insertText", json!({ "text": text }));
    }

    /// A PNG screenshot of the whole page, written to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let width = self.eval("document.documentElement.clientWidth");
        let height = self.eval(
            "Math.ceil(Math.max(...[...document.body.children].map(e => e.getBoundingClientRect().bottom))) + 24",
        );
        self.command(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
        let shot = self.command(
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let png = decode_base64(shot["data"].as_str().unwrap());
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pipe whose two ends close on exec (the child gets copies at 3 and 4).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Standard base64 (the screenshot's encoding), padding allowed.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, d) in chunk.iter().enumerate() {
            n |= u32::from(*d) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// The directory for files a test writes for people to look at (the
/// screenshot in docs/), when asked to with `LBD_SCREENSHOT_DIR`.
pub fn screenshot_dir() -> Option<PathBuf> {
    std::env::var_os("LBD_SCREENSHOT_DIR").map(PathBuf::from)
}
