//! `man -l` renders every page without a warning, and nothing runs past an 80-column
//! terminal. Needs man-db and groff (scripts/test installs them); without `man` the test says
//! so and passes, since there is nothing to render with.

#[cfg(test)] // clippy: helpers of tests may panic like the tests themselves
mod common;

use std::process::Command;

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn man_renders_every_page_without_warnings() {
    if !have("man") {
        eprintln!("SKIPPED: `man` is not installed (apt-get install man-db groff-base)");
        return;
    }
    let mut problems = Vec::new();
    for file in common::all_pages() {
        let path = postern_man::man_dir().join(&file);
        // --warnings=w: every groff warning, not just man-db's default (undefined macros).
        let out = Command::new("man")
            .args(["--warnings=w", "-l", "-E", "UTF-8"])
            .arg(&path)
            .env("MANWIDTH", "80")
            .env("LC_ALL", "C.UTF-8")
            .output()
            .expect("run man");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !stderr.trim().is_empty() {
            problems.push(format!("man -l man/{file}: {}\n{stderr}", out.status));
            continue;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.contains("NAME") || text.lines().count() < 20 {
            problems.push(format!("man -l man/{file} printed almost nothing:\n{text}"));
        }
        for line in text.lines() {
            if line.chars().count() > 80 {
                problems.push(format!(
                    "man/{file}: a line is wider than 80 columns:\n{line}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn groff_finds_nothing_to_warn_about() {
    if !have("groff") {
        eprintln!("SKIPPED: `groff` is not installed (apt-get install groff-base)");
        return;
    }
    for file in common::all_pages() {
        let path = postern_man::man_dir().join(&file);
        let out = Command::new("groff")
            .args(["-ww", "-z", "-k", "-man", "-Tutf8"])
            .arg(&path)
            .output()
            .expect("run groff");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "groff -ww man/{file}: {}\n{stderr}",
            out.status
        );
    }
}
