//! Every command's `--help` works and shows an example; completions and man pages
//! are generated for every shell and command.

mod common;

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_snapfs"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

const COMMANDS: &[&str] = &[
    "init",
    "import",
    "status",
    "mount",
    "umount",
    "snapshot",
    "list",
    "diff",
    "log",
    "restore",
    "rollback",
    "forget",
    "hold",
    "release",
    "gc",
    "scrub",
    "check",
    "recover",
    "mirror",
    "completions",
    "manpage",
];

#[test]
fn every_command_has_help_with_a_description_and_an_example() {
    let (ok, top) = run(&["--help"]);
    assert!(ok);
    for cmd in COMMANDS {
        assert!(top.contains(cmd), "top-level help lists {cmd}");
        let (ok, help) = run(&[cmd, "--help"]);
        assert!(ok, "{cmd} --help");
        assert!(
            help.contains("Example:"),
            "{cmd} --help shows an example:\n{help}"
        );
        assert!(
            help.lines().next().is_some_and(|l| l.len() > 10),
            "{cmd} has a description"
        );
    }
    for sub in ["add", "remove"] {
        let (ok, help) = run(&["mirror", sub, "--help"]);
        assert!(ok && help.contains("Example:"), "mirror {sub}: {help}");
    }
    let (_, release) = run(&["release", "--help"]);
    assert!(release.starts_with("Unpin"), "{release}");
}

#[test]
fn completions_are_generated_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_snapfs()"),
        ("zsh", "#compdef snapfs"),
        ("fish", "complete -c snapfs"),
    ] {
        let (ok, script) = run(&["completions", shell]);
        assert!(ok, "{shell}");
        assert!(
            script.contains(marker),
            "{shell} script: {}",
            &script[..script.len().min(200)]
        );
        assert!(script.contains("rollback"), "{shell} completes subcommands");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_snapfs"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn man_pages_are_written_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = run(&["manpage", dir.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    for cmd in COMMANDS {
        let page = std::fs::read_to_string(dir.path().join(format!("snapfs-{cmd}.1"))).unwrap();
        assert!(page.contains(".TH"), "snapfs-{cmd}.1 is a man page");
    }
    let top = std::fs::read_to_string(dir.path().join("snapfs.1")).unwrap();
    assert!(top.contains("snapfs"));
}
