//! Renders a command page: clap_mangen for the name, synopsis, description and options of the
//! command and of every subcommand, down to the leaves (`posternd tokens add`), and the prose
//! of [`crate::prose`] for what clap does not know.
//!
//! The output is a pure function of the clap definition and the prose: no date, no
//! environment, so that a committed page can be compared byte for byte with a fresh one.

use std::io;

use clap_mangen::Man;
use roff::{bold, italic, roman, Inline, Roff};

use crate::prose::{Example, Prose};
use crate::CommandPage;

/// Widest line of a preformatted block: an 80-column terminal minus the section indent (7)
/// and the block's own indent (4), with a column to spare.
const BLOCK_WIDTH: usize = 68;

/// Renders a command page as roff source.
pub fn render(page: &CommandPage) -> String {
    let mut cmd = page.command.clone();
    cmd.build();
    let name = cmd.get_name().to_owned();
    let version = cmd.get_version().unwrap_or_default().to_owned();
    let prose = page.prose;
    let man = Man::new(cmd.clone());

    let mut out = preamble();
    // Written by hand: `Roff::control` drops an empty argument, and the date is left empty on
    // purpose (a date would make every regeneration differ).
    out.push_str(&format!(
        ".TH {} {} \"\" \"Postern {version}\" \"Postern Manual\"\n",
        name.to_uppercase().replace('-', "\\-"),
        page.section
    ));

    let mut r = Roff::new();
    r.control("SH", ["NAME"]);
    r.text([roman(format!("{name} - {}", prose.name))]);
    out.push_str(&body(&r));

    out.push_str(&clap_section(|w| man.render_synopsis_section(w), false));
    out.push_str(&clap_section(|w| man.render_description_section(w), false));
    let mut r = Roff::new();
    for para in prose.description {
        r.control("PP", []);
        r.text(inline(para));
    }
    out.push_str(&body(&r));
    out.push_str(&clap_section(|w| man.render_options_section(w), false));

    let mut r = Roff::new();
    r.control("SH", ["COMMANDS"]);
    r.text([roman(
        "Every command also takes -h (--help): print its help and exit.",
    )]);
    out.push_str(&body(&r));
    for sub in visible_subcommands(&cmd) {
        render_command(&mut out, sub.clone());
    }

    out.push_str(&body(&prose_sections(prose)));
    ascii(&out)
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
    out.push_str(&clap_section(|w| man.render_description_section(w), true));
    let mut r = Roff::new();
    r.control("PP", []);
    out.push_str(&body(&r));
    out.push_str(&clap_section(|w| man.render_synopsis_section(w), true));
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        out.push_str(&clap_section(|w| man.render_options_section(w), true));
    }
    if let Some(help) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        out.push_str(&body(&help_text(&help.to_string())));
    }
}

/// The sections after COMMANDS.
fn prose_sections(prose: &Prose) -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["EXAMPLES"]);
    for Example { what, commands } in prose.examples {
        r.control("PP", []);
        r.text(inline(what));
        block(&mut r, commands.iter().map(|c| c.to_string()).collect());
    }
    r.control("SH", ["EXIT STATUS"]);
    tagged(&mut r, prose.exit_status, bold);
    if !prose.environment.is_empty() {
        r.control("SH", ["ENVIRONMENT"]);
        tagged(&mut r, prose.environment, bold);
    }
    r.control("SH", ["FILES"]);
    tagged(&mut r, prose.files, italic);
    r.control("SH", ["SEE ALSO"]);
    let mut refs = Vec::new();
    for (i, page) in prose.see_also.iter().enumerate() {
        let (name, section) = page
            .strip_suffix(')')
            .and_then(|p| p.rsplit_once('('))
            .unwrap_or((page, ""));
        refs.push(bold(name));
        refs.push(roman(format!("({section})")));
        if i + 1 < prose.see_also.len() {
            refs.push(roman(", "));
        }
    }
    r.text(refs);
    r
}

/// A `.TP` list: tag in `font`, then the description.
fn tagged(r: &mut Roff, items: &[(&str, &str)], font: fn(String) -> Inline) {
    for (tag, text) in items {
        r.control("TP", []);
        r.text([font(tag.to_string())]);
        r.text(inline(text));
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

/// One clap_mangen section, without the preamble and, when `drop_heading`, without its `.SH`
/// line (a subcommand's sections go under its `.SS`).
fn clap_section(
    render: impl Fn(&mut dyn io::Write) -> io::Result<()>,
    drop_heading: bool,
) -> String {
    let mut buf = Vec::new();
    // Writing to a Vec cannot fail, and clap_mangen emits UTF-8 for UTF-8 input.
    if render(&mut buf).is_err() {
        return String::new();
    }
    let text = code_spans(&strip_preamble(&String::from_utf8_lossy(&buf)));
    if !drop_heading {
        return text;
    }
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

    #[test]
    fn help_text_keeps_examples_apart_from_prose() {
        let r = help_text("Example:\n  posternd nodes rm web1\n\nRemoves it.").to_roff();
        assert!(r.contains(".nf\nposternd nodes rm web1\n.fi"), "{r}");
        assert!(r.contains(".PP\nRemoves it."), "{r}");
    }
}
