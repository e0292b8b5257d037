//! `mangen`: writes the command pages (man/*.1, man/*.8): their templates in man/templates/
//! filled from the clap definitions.
//! `scripts/man` runs it; with `--check` it only reports stale pages (exit 1).

use std::process::ExitCode;

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(_) => {
            eprintln!("usage: mangen [--check]");
            return ExitCode::from(2);
        }
    };
    let dir = postern_man::man_dir();
    let mut stale = 0;
    for page in postern_man::command_pages() {
        let path = dir.join(page.file);
        let fresh = match postern_man::render::render(&page) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("mangen: {e}");
                return ExitCode::FAILURE;
            }
        };
        if std::fs::read_to_string(&path).ok().as_deref() == Some(fresh.as_str()) {
            continue;
        }
        if check {
            eprintln!("{} is stale: run scripts/man", path.display());
            stale += 1;
        } else if let Err(e) = std::fs::write(&path, fresh) {
            eprintln!("mangen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if stale > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
