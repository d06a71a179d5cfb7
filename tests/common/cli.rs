//! Running the `resnetc` binary as a user would, and reading what it printed.

use std::path::PathBuf;
use std::process::{Command, Output};

/// `resnetc ARGS...` from the repository root.
pub fn resnetc(args: &[&str]) -> Output {
    resnetc_env(args, &[])
}

/// `resnetc ARGS...` from the repository root with extra environment variables.
pub fn resnetc_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_resnetc"));
    c.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("the resnetc binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The exit status is `code`; otherwise fails showing both output streams.
#[track_caller]
pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "stdout:\n{}\nstderr:\n{}", stdout(o), stderr(o));
}

/// A fresh scratch directory for one test (named after the test program, the process and the test).
pub fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resnetc-{}-{}-{test}", env!("CARGO_CRATE_NAME"), std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
