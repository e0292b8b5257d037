//! The command pages in `man/` are exactly what their templates and the binaries' clap
//! definitions render, every template belongs to a page, every page has the sections a reader
//! looks for, and every example of a Postern command in the pages and in the `--help` texts
//! parses with that command's clap definition.

#[cfg(test)] // clippy: helpers of tests may panic like the tests themselves
mod common;

use std::collections::BTreeMap;

use clap::error::ErrorKind;
use postern_man::render::render;
use postern_man::{command_pages, man_dir, FILE_PAGES};

use common::{all_pages, blocks, page, unroff};

#[test]
fn committed_pages_match_the_clap_definitions() {
    let mut stale = Vec::new();
    for p in command_pages() {
        let fresh = render(&p).unwrap();
        let path = man_dir().join(p.file);
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == fresh => {}
            Ok(committed) => {
                let (n, old, new) = committed
                    .lines()
                    .chain(std::iter::repeat(""))
                    .zip(fresh.lines().chain(std::iter::repeat("")))
                    .enumerate()
                    .find(|(_, (a, b))| a != b)
                    .map(|(i, (a, b))| (i + 1, a, b))
                    .unwrap_or((0, "", ""));
                stale.push(format!(
                    "man/{} is stale; first difference at line {n}:\n  committed: {old}\n  fresh:     {new}",
                    p.file
                ));
            }
            Err(e) => stale.push(format!("man/{} cannot be read: {e}", p.file)),
        }
    }
    assert!(
        stale.is_empty(),
        "{}\n\nThe man pages are generated from man/templates/ and the clap definitions: run \
         scripts/man and commit the pages it writes.",
        stale.join("\n")
    );
}

#[test]
fn every_template_is_a_page_and_names_it() {
    let pages = command_pages();
    for p in &pages {
        // `posternd.8` → `.TH POSTERND 8 `: the heading of the page the template renders.
        let (name, section) = p.file.rsplit_once('.').unwrap();
        let th = format!(".TH {} {section} ", name.to_uppercase().replace('-', "\\-"));
        let first = p.template.lines().find(|l| !l.starts_with(".\\\""));
        assert!(
            first.is_some_and(|l| l.starts_with(&th)),
            "templates/{}.in does not start with {th:?}: {first:?}",
            p.file
        );
    }
    // No template that no page uses (an edit there would change nothing).
    for entry in std::fs::read_dir(man_dir().join("templates")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            pages.iter().any(|p| format!("{}.in", p.file) == name),
            "man/templates/{name} belongs to no page"
        );
    }
}

#[test]
fn rendering_is_deterministic() {
    for p in command_pages() {
        assert_eq!(render(&p).unwrap(), render(&p).unwrap(), "{}", p.file);
    }
}

/// The full path of every leaf command (`posternd tokens add`).
fn leaves(mut cmd: clap::Command, out: &mut Vec<String>) {
    cmd.build();
    let subs: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .cloned()
        .collect();
    if subs.is_empty() {
        out.push(
            cmd.get_bin_name()
                .unwrap_or_else(|| cmd.get_name())
                .to_owned(),
        );
    }
    for s in subs {
        leaves(s, out);
    }
}

/// The `.SH` headings of a page, without quotes.
fn headings(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(".SH "))
        .map(|h| h.replace('"', ""))
        .collect()
}

#[test]
fn command_pages_have_every_section_and_every_subcommand() {
    for p in command_pages() {
        let text = render(&p).unwrap();
        let have = headings(&text);
        for section in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "COMMANDS",
            "EXAMPLES",
            "EXIT STATUS",
            "FILES",
            "SEE ALSO",
        ] {
            assert!(
                have.iter().any(|h| h == section),
                "{} lacks {section}",
                p.file
            );
        }
        let mut paths = Vec::new();
        leaves(p.command.clone(), &mut paths);
        assert!(paths.len() >= 2, "{}: {paths:?}", p.file);
        for path in paths {
            let heading = format!(".SS \"{}\"\n", path.replace('-', "\\-"));
            assert!(
                text.contains(&heading),
                "{} has no section for {path}",
                p.file
            );
        }
    }
    for file in FILE_PAGES {
        let have = headings(&page(file));
        for section in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "KEYS",
            "EXAMPLES",
            "FILES",
            "SEE ALSO",
        ] {
            assert!(have.iter().any(|h| h == section), "{file} lacks {section}");
        }
    }
}

#[test]
fn references_to_postern_pages_name_existing_pages() {
    let pages = all_pages();
    for file in &pages {
        let text: String = page(file).lines().map(unroff).collect::<Vec<_>>().join(" ");
        for (i, _) in text.match_indices("postern") {
            let rest = &text[i..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                .collect();
            let after = &rest[name.len()..];
            let section = match after.as_bytes() {
                [b'(', s @ b'1'..=b'9', b')', ..] => *s as char,
                _ => continue,
            };
            let target = format!("{name}.{section}");
            assert!(
                pages.contains(&target),
                "{file} refers to {name}({section}), but man/{target} does not exist"
            );
        }
    }
}

/// Shell words of a command line, split into the commands of a pipeline or list, without
/// redirections and comments. Enough shell for examples, not a shell.
fn commands(line: &str) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut drop_next = false;
    let mut chars = line.chars();
    let end_word =
        |word: &mut String, in_word: &mut bool, drop: &mut bool, out: &mut Vec<Vec<String>>| {
            if *in_word {
                if *drop {
                    *drop = false;
                } else if let Some(cmd) = out.last_mut() {
                    cmd.push(std::mem::take(word));
                }
                word.clear();
                *in_word = false;
            }
        };
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"') | None, '\\') => {
                if let Some(n) = chars.next() {
                    word.push(n);
                    in_word = true;
                }
            }
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '#') if !in_word => break,
            (None, ' ' | '\t') => end_word(&mut word, &mut in_word, &mut drop_next, &mut out),
            (None, '|' | ';' | '&') => {
                end_word(&mut word, &mut in_word, &mut drop_next, &mut out);
                if out.last().is_some_and(|c| !c.is_empty()) {
                    out.push(Vec::new());
                }
            }
            (None, '>' | '<') => {
                end_word(&mut word, &mut in_word, &mut drop_next, &mut out);
                drop_next = true;
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    end_word(&mut word, &mut in_word, &mut drop_next, &mut out);
    out.retain(|c| !c.is_empty());
    out
}

/// Lines ending in a backslash continued by the next.
fn join_continuations(lines: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut pending: Option<String> = None;
    for l in lines {
        let l = match pending.take() {
            Some(p) => format!("{p} {}", l.trim_start()),
            None => l.clone(),
        };
        match l.trim_end().strip_suffix('\\') {
            Some(head) => pending = Some(head.trim_end().to_owned()),
            None => out.push(l),
        }
    }
    out.extend(pending);
    out
}

/// Every help text (`after_help`) in a command tree.
fn help_texts(mut cmd: clap::Command, out: &mut Vec<(String, String)>) {
    cmd.build();
    let name = cmd
        .get_bin_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_owned();
    if let Some(h) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        out.push((format!("`{name} --help`"), h.to_string()));
    }
    let subs: Vec<clap::Command> = cmd.get_subcommands().cloned().collect();
    for s in subs {
        help_texts(s, out);
    }
}

/// Every flag of a command tree that reads an environment variable, by variable.
fn env_flags(cmd: &clap::Command, out: &mut BTreeMap<String, String>) {
    for a in cmd.get_arguments() {
        if let (Some(env), Some(long)) = (a.get_env(), a.get_long()) {
            out.insert(env.to_string_lossy().into_owned(), long.to_owned());
        }
    }
    for s in cmd.get_subcommands() {
        env_flags(s, out);
    }
}

/// Parses `words` (a command line of one of Postern's binaries) with its clap definition.
/// Values are not judged: examples use placeholders such as `sha256:...` for typed values.
fn check(cmd: &clap::Command, env: &[(String, String)], words: &[String]) -> Result<(), String> {
    let mut flags = BTreeMap::new();
    env_flags(cmd, &mut flags);
    let mut argv = words.to_vec();
    for (var, value) in env {
        let long = flags
            .get(var)
            .ok_or_else(|| format!("sets {var}, which no flag of {} reads", cmd.get_name()))?;
        argv.push(format!("--{long}"));
        argv.push(value.clone());
    }
    match cmd.clone().try_get_matches_from(&argv) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ValueValidation | ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e.render().to_string()),
    }
}

#[test]
fn every_example_parses() {
    let binaries: BTreeMap<String, clap::Command> = command_pages()
        .into_iter()
        .map(|p| (p.command.get_name().to_owned(), p.command))
        .collect();
    // (where, lines) for every example block of every page and every --help text.
    let mut sources: Vec<(String, Vec<String>)> = Vec::new();
    for file in all_pages() {
        for b in blocks(&page(&file)) {
            sources.push((format!("man/{file}"), b));
        }
    }
    for cmd in binaries.values() {
        let mut texts = Vec::new();
        help_texts(cmd.clone(), &mut texts);
        for (place, text) in texts {
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with(' '))
                .map(|l| l.trim().to_owned())
                .collect();
            sources.push((place, lines));
        }
    }
    let mut failures = Vec::new();
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    for (place, lines) in sources {
        for line in join_continuations(&lines) {
            for mut words in commands(line.trim()) {
                let mut env = Vec::new();
                while let Some((var, value)) = words.first().and_then(|w| w.split_once('=')) {
                    if !var.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                        break;
                    }
                    env.push((var.to_owned(), value.to_owned()));
                    words.remove(0);
                }
                let Some(cmd) = words.first().and_then(|w| binaries.get(w)) else {
                    continue;
                };
                *checked.entry(cmd.get_name().to_owned()).or_default() += 1;
                if let Err(e) = check(cmd, &env, &words) {
                    failures.push(format!("{place}: `{}`:\n{e}", words.join(" ")));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The check must have seen the examples: a broken extraction would pass vacuously.
    for name in binaries.keys() {
        let n = checked.get(name).copied().unwrap_or(0);
        assert!(
            n >= 5,
            "only {n} examples of {name} were checked: {checked:?}"
        );
    }
}

#[test]
fn example_checker_rejects_what_the_cli_rejects() {
    let posternd = posternd::cli::command();
    let ok = |l: &str| check(&posternd, &[], &commands(l)[0]);
    assert!(ok("posternd lock add --user alice --reason 'laptop stolen'").is_ok());
    assert!(ok("posternd lock add --user alice --reson x").is_err());
    assert!(ok("posternd lock add --user alice").is_err());
    assert!(ok("posternd tokens add --kind server").is_err());
    assert!(ok("posternd token add --kind node").is_err());
    let shim = postern_shim::cli::command();
    let env = [("POSTERN_JOIN_TOKEN".to_owned(), "T".to_owned())];
    let line = commands("postern-shim join --ca U --ca-pin P --name web1")[0].clone();
    assert!(check(&shim, &env, &line).is_ok());
    assert!(check(&shim, &[], &line).is_err());
    let bogus = [("POSTERN_NOPE".to_owned(), "T".to_owned())];
    assert!(check(&shim, &bogus, &line).is_err());
    assert_eq!(
        commands("printf '%s\\n' \"$PW\" | postern login --otp \"$(x \\\"y\\\")\" > out # c"),
        vec![
            vec!["printf".to_owned(), "%s\\n".to_owned(), "$PW".to_owned()],
            vec![
                "postern".to_owned(),
                "login".to_owned(),
                "--otp".to_owned(),
                "$(x \"y\")".to_owned()
            ],
        ]
    );
}
