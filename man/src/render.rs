//! Renders a command page: its roff template (`man/templates/PAGE.in`, the prose) with the
//! placeholders filled from the clap definition by clap_mangen: the synopsis, description and
//! options of the command, and of every subcommand down to the leaves (`posternd tokens add`).
//!
//! The output is a pure function of the clap definition and the template: no date, no
//! environment, so that a committed page can be compared byte for byte with a fresh one.

use std::io;

use clap_mangen::Man;
use roff::{bold, roman, Inline, Roff};

use crate::CommandPage;

/// Widest line of a preformatted block: an 80-column terminal minus the section indent (7)
/// and the block's own indent (4), with a column to spare.
const BLOCK_WIDTH: usize = 68;

/// What a template may not hold; each names the template's page and line.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A character outside ASCII (roff escapes such as `\[u2026]` stand for them).
    #[error("templates/{page}.in:{line}: not ASCII (write a roff escape such as \\[u2026])")]
    NotAscii {
        /// The page's file name.
        page: &'static str,
        /// The line, from 1.
        line: usize,
    },
    /// `!!NAME!!` that is not one of [`PLACEHOLDERS`], or a section placeholder that does not
    /// stand alone on its line.
    #[error("templates/{page}.in:{line}: unknown or misplaced placeholder in {text:?}")]
    Unknown {
        /// The page's file name.
        page: &'static str,
        /// The line, from 1.
        line: usize,
        /// The line's text.
        text: String,
    },
    /// A placeholder the template lacks or repeats: each appears exactly once.
    #[error("templates/{page}.in: !!{placeholder}!! appears {count} times, not once")]
    Count {
        /// The page's file name.
        page: &'static str,
        /// The placeholder's name.
        placeholder: &'static str,
        /// How often it appears.
        count: usize,
    },
}

/// The placeholders of a command page's template. `VERSION` stands anywhere in a line (the
/// `.TH` line); the others alone on their line, under the section heading they fill:
/// `SYNOPSIS`, `DESCRIPTION` (the command's about text) and `OPTIONS` are clap_mangen's
/// sections of the command, `COMMANDS` one `.SS` per leaf subcommand with its description,
/// synopsis, options and its help's examples.
pub const PLACEHOLDERS: [&str; 5] = ["VERSION", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS"];

/// Renders a command page as roff source.
pub fn render(page: &CommandPage) -> Result<String, TemplateError> {
    let mut cmd = page.command.clone();
    cmd.build();
    let version = cmd.get_version().unwrap_or_default().to_owned();
    let man = Man::new(cmd.clone());
    let mut commands = String::new();
    for sub in visible_subcommands(&cmd) {
        render_command(&mut commands, sub.clone());
    }
    let sections = [
        ("SYNOPSIS", clap_section(|w| man.render_synopsis_section(w))),
        (
            "DESCRIPTION",
            clap_section(|w| man.render_description_section(w)),
        ),
        ("OPTIONS", clap_section(|w| man.render_options_section(w))),
        ("COMMANDS", commands),
    ];
    // The preamble defines the `\*(Aq` string that clap_mangen's (and the templates')
    // apostrophes use.
    let mut out = preamble();
    out.push_str(&fill(page.file, page.template, &version, &sections)?);
    Ok(out)
}

/// The template with its comment lines (`.\"`) dropped, `!!VERSION!!` replaced, and each
/// section placeholder replaced by its roff (made ASCII: it comes from clap's help texts).
fn fill(
    page: &'static str,
    template: &str,
    version: &str,
    sections: &[(&'static str, String)],
) -> Result<String, TemplateError> {
    // Comment lines are the template's own: they are neither copied nor filled.
    let lines: Vec<(usize, &str)> = template
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.starts_with(".\\\""))
        .collect();
    for placeholder in PLACEHOLDERS {
        let wanted = format!("!!{placeholder}!!");
        let count = lines.iter().map(|(_, l)| l.matches(&wanted).count()).sum();
        if count != 1 {
            return Err(TemplateError::Count {
                page,
                placeholder,
                count,
            });
        }
    }
    let mut out = String::with_capacity(template.len() * 4);
    for (line_no, line) in lines {
        if !line.is_ascii() {
            return Err(TemplateError::NotAscii {
                page,
                line: line_no,
            });
        }
        if let Some((_, roff)) = sections
            .iter()
            .find(|(name, _)| line == format!("!!{name}!!"))
        {
            out.push_str(&ascii(roff));
            continue;
        }
        let line = line.replace("!!VERSION!!", version);
        if has_placeholder(&line) {
            return Err(TemplateError::Unknown {
                page,
                line: line_no,
                text: line,
            });
        }
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// Whether a line still holds `!!NAME!!` (capitals and underscores) after filling.
fn has_placeholder(line: &str) -> bool {
    let parts: Vec<&str> = line.split("!!").collect();
    parts.len() >= 3 && parts[1..parts.len() - 1].iter().any(|p| is_name(p))
}

/// Whether `s` looks like a placeholder's name (`!!NAME!!`): capitals and underscores.
fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_uppercase() || c == '_')
}

/// Non-ASCII characters as groff escapes (`…` → `\[u2026]`): the page then reads the same
/// whatever input encoding the formatter assumes.
fn ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\[u{:04X}]", u32::from(c)));
        }
    }
    out
}

/// The subcommands a page documents (clap's generated `help` is documented once, above).
fn visible_subcommands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// One `.SS` per leaf command, named by its full path (`posternd tokens add`); a group of
/// subcommands (`posternd tokens`) contributes only its leaves.
fn render_command(out: &mut String, mut cmd: clap::Command) {
    // Building sets the subcommands' bin names ("posternd tokens" → "posternd tokens add").
    cmd.build();
    if cmd.has_subcommands() {
        let subs: Vec<clap::Command> = visible_subcommands(&cmd).cloned().collect();
        for sub in subs {
            render_command(out, sub);
        }
        return;
    }
    // -h and -V are documented once for the whole page.
    for id in ["help", "version"] {
        if cmd.get_arguments().any(|a| a.get_id() == id) {
            cmd = cmd.mut_arg(id, |a| a.hide(true));
        }
    }
    let path = cmd
        .get_bin_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_owned();
    let man = Man::new(cmd.clone());
    let mut r = Roff::new();
    // An unescaped `-` in a heading may be typeset as a hyphen, which cannot be pasted.
    r.control("SS", [path.replace('-', "\\-").as_str()]);
    out.push_str(&body(&r));
    out.push_str(&clap_section(|w| man.render_description_section(w)));
    let mut r = Roff::new();
    r.control("PP", []);
    out.push_str(&body(&r));
    out.push_str(&clap_section(|w| man.render_synopsis_section(w)));
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        out.push_str(&clap_section(|w| man.render_options_section(w)));
    }
    if let Some(help) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        out.push_str(&body(&help_text(&help.to_string())));
    }
}

/// Text with `` `code` `` spans set in bold.
fn inline(text: &str) -> Vec<Inline> {
    text.split('`')
        .enumerate()
        .filter(|(_, part)| !part.is_empty())
        .map(
            |(i, part)| {
                if i % 2 == 1 {
                    bold(part)
                } else {
                    roman(part)
                }
            },
        )
        .collect()
}

/// A clap help text (`after_help`) as roff: indented lines are examples, kept as they are in
/// an indented block; other lines are prose, joined into paragraphs where the source merely
/// wrapped a long line.
pub fn help_text(text: &str) -> Roff {
    let mut r = Roff::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() {
            i += 1;
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            let start = i;
            while i < lines.len() && lines[i].starts_with(char::is_whitespace) {
                i += 1;
            }
            let run = &lines[start..i];
            let indent = run
                .iter()
                .map(|l| l.len() - l.trim_start().len())
                .min()
                .unwrap_or(0);
            block(&mut r, run.iter().map(|l| l[indent..].to_owned()).collect());
            continue;
        }
        r.control("PP", []);
        let mut prev: Option<&str> = None;
        while i < lines.len() && !lines[i].trim().is_empty() {
            let l = lines[i];
            if l.starts_with(char::is_whitespace) {
                break;
            }
            if let Some(p) = prev {
                // A short line, or one that introduces what follows, was broken on purpose.
                if p.chars().count() < 60 || p.ends_with(':') {
                    r.control("br", []);
                }
            }
            r.text(inline(l));
            prev = Some(l);
            i += 1;
        }
        // The block that follows a prose line belongs to it; the next prose gets a `.PP`.
    }
    r
}

/// An indented, unfilled block of command lines; lines too wide for a terminal are broken
/// with a shell line continuation.
fn block(r: &mut Roff, lines: Vec<String>) {
    r.control("RS", ["4"]);
    r.control("nf", []);
    for line in lines {
        // A line that introduces what follows is prose, not a command: wrap it as prose.
        if line.trim_end().ends_with(':') {
            for part in wrap_prose(&line, BLOCK_WIDTH) {
                r.text([roman(part)]);
            }
            continue;
        }
        for part in wrap_command(&line, BLOCK_WIDTH) {
            r.text([roman(part)]);
        }
    }
    r.control("fi", []);
    r.control("RE", []);
}

/// Breaks a line of prose at blanks into lines of at most `width` characters, keeping its
/// indentation.
fn wrap_prose(line: &str, width: usize) -> Vec<String> {
    let indent: String = line.chars().take_while(|c| *c == ' ').collect();
    let mut out = Vec::new();
    let mut cur = indent.clone();
    for w in line.split_whitespace() {
        if cur.len() > indent.len() && cur.chars().count() + 1 + w.chars().count() > width {
            out.push(std::mem::replace(&mut cur, indent.clone()));
        }
        if cur.len() > indent.len() {
            cur.push(' ');
        }
        cur.push_str(w);
    }
    out.push(cur);
    out
}

/// Breaks a shell command line into lines of at most `width` characters, at blanks outside
/// quotes, ending every line but the last with ` \` and indenting the continuations.
pub fn wrap_command(line: &str, width: usize) -> Vec<String> {
    if line.chars().count() <= width {
        return vec![line.to_owned()];
    }
    let indent: String = line.chars().take_while(|c| *c == ' ').collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = line.trim_start().chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, ' ') => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                continue;
            }
            // A backslash escapes the next character, except between single quotes.
            (None | Some('"'), '\\') => {
                word.push(c);
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                continue;
            }
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        word.push(c);
    }
    if !word.is_empty() {
        words.push(word);
    }
    let more = format!("{indent}    ");
    let mut out = Vec::new();
    let mut cur = indent.clone();
    for w in words {
        let fits = cur.chars().count() + 1 + w.chars().count() + 2 <= width;
        if cur.trim().is_empty() || fits {
            if !cur.trim().is_empty() {
                cur.push(' ');
            }
            cur.push_str(&w);
        } else {
            out.push(format!("{cur} \\"));
            cur = format!("{more}{w}");
        }
    }
    out.push(cur);
    out
}

/// The apostrophe preamble the `roff` crate puts before every document it renders.
fn preamble() -> String {
    Roff::new().render()
}

/// A rendered fragment without the preamble, so that fragments can be concatenated.
fn body(r: &Roff) -> String {
    strip_preamble(&r.render())
}

fn strip_preamble(s: &str) -> String {
    s.strip_prefix(&preamble()).unwrap_or(s).to_owned()
}

/// One clap_mangen section without the preamble and its `.SH` line: the template (or, for a
/// subcommand, its `.SS`) has the heading.
fn clap_section(render: impl Fn(&mut dyn io::Write) -> io::Result<()>) -> String {
    let mut buf = Vec::new();
    // Writing to a Vec cannot fail, and clap_mangen emits UTF-8 for UTF-8 input.
    if render(&mut buf).is_err() {
        return String::new();
    }
    let text = code_spans(&strip_preamble(&String::from_utf8_lossy(&buf)));
    match text.split_once('\n') {
        Some((first, rest)) if first.starts_with(".SH") => rest.to_owned(),
        _ => text,
    }
}

/// `` `code` `` in clap's help texts in bold, as in the prose. A line with an odd number of
/// backticks is left alone.
fn code_spans(roff: &str) -> String {
    let mut out = String::with_capacity(roff.len());
    for line in roff.split_inclusive('\n') {
        if line.starts_with('.') || line.matches('`').count() % 2 == 1 {
            out.push_str(line);
            continue;
        }
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 1 {
                out.push_str(&format!("\\fB{part}\\fR"));
            } else {
                out.push_str(part);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_long_commands_outside_quotes() {
        let line = "posternd lock add --user alice --reason 'laptop stolen on the train' --ttl 1h";
        let out = wrap_command(line, 40);
        assert!(out.iter().all(|l| l.chars().count() <= 40), "{out:?}");
        assert!(out
            .iter()
            .any(|l| l.contains("'laptop stolen on the train'")));
        assert_eq!(
            out.join(" ")
                .replace(" \\", "")
                .split_whitespace()
                .collect::<Vec<_>>(),
            line.split_whitespace().collect::<Vec<_>>()
        );
    }

    #[test]
    fn short_lines_stay_whole() {
        assert_eq!(
            wrap_command("  postern status", 68),
            vec!["  postern status"]
        );
    }

    fn filled(template: &str) -> Result<String, TemplateError> {
        let sections = [
            ("SYNOPSIS", "syn\n".to_owned()),
            ("DESCRIPTION", "d\u{e9}sc\n".to_owned()),
            ("OPTIONS", "opt\n".to_owned()),
            ("COMMANDS", "cmd\n".to_owned()),
        ];
        fill("t.8", template, "1.2.3", &sections)
    }

    const GOOD: &str = ".\\\" a comment of the template\n.TH T 8 \"\" \"Postern !!VERSION!!\"\n\
                        .SH SYNOPSIS\n!!SYNOPSIS!!\n.SH DESCRIPTION\n!!DESCRIPTION!!\n\
                        Prose.\n.SH OPTIONS\n!!OPTIONS!!\n!!COMMANDS!!\n";

    #[test]
    fn fills_placeholders_and_drops_template_comments() {
        assert_eq!(
            filled(GOOD).unwrap(),
            ".TH T 8 \"\" \"Postern 1.2.3\"\n.SH SYNOPSIS\nsyn\n.SH DESCRIPTION\n\
             d\\[u00E9]sc\nProse.\n.SH OPTIONS\nopt\ncmd\n"
        );
    }

    #[test]
    fn refuses_a_missing_repeated_unknown_or_misplaced_placeholder_and_non_ascii() {
        let missing = GOOD.replace("!!OPTIONS!!\n", "");
        assert!(matches!(
            filled(&missing),
            Err(TemplateError::Count {
                placeholder: "OPTIONS",
                count: 0,
                ..
            })
        ));
        let twice = format!("{GOOD}!!COMMANDS!!\n");
        assert!(matches!(
            filled(&twice),
            Err(TemplateError::Count {
                placeholder: "COMMANDS",
                count: 2,
                ..
            })
        ));
        let unknown = format!("{GOOD}See !!EXAMPLES!! here.\n");
        assert!(matches!(
            filled(&unknown),
            Err(TemplateError::Unknown { line: 11, .. })
        ));
        let inline = GOOD.replace("Prose.", "Prose !!DESCRIPTION!!");
        assert!(matches!(filled(&inline), Err(TemplateError::Count { .. })));
        let misplaced = GOOD.replace("!!SYNOPSIS!!", "Usage: !!SYNOPSIS!!");
        assert!(matches!(
            filled(&misplaced),
            Err(TemplateError::Unknown { line: 4, .. })
        ));
        let accented = GOOD.replace("Prose.", "Pros\u{e9}.");
        assert!(matches!(
            filled(&accented),
            Err(TemplateError::NotAscii { line: 7, .. })
        ));
        // Two exclamation marks in prose are not a placeholder.
        assert!(filled(&GOOD.replace("Prose.", "Really!! Yes!!")).is_ok());
    }

    #[test]
    fn help_text_keeps_examples_apart_from_prose() {
        let r = help_text("Example:\n  posternd nodes rm web1\n\nRemoves it.").to_roff();
        assert!(r.contains(".nf\nposternd nodes rm web1\n.fi"), "{r}");
        assert!(r.contains(".PP\nRemoves it."), "{r}");
    }
}
