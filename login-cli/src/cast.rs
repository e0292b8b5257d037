//! asciicast v2 (the format of `asciinema rec`) as `postern play` reads it: the first line is
//! a JSON header, each further line an event `[time, code, data]` with `time` in seconds from
//! the start. Only output events (`"o"`) are played; input (`"i"`), resize (`"r"`) and
//! marker (`"m"`) events are skipped.

use std::time::Duration;

use postern_core::cast::{Header, HeaderError};

/// The longest pause played back, whatever the recording says: an idle minute is not worth
/// watching.
pub const MAX_IDLE: Duration = Duration::from_secs(2);

/// One output event.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Seconds from the start of the recording.
    pub time: f64,
    /// What the terminal received.
    pub data: String,
}

/// A parsed recording.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq)]
pub struct Cast {
    /// The header.
    pub header: Header,
    /// Output events in file order.
    pub output: Vec<Output>,
    /// Lines that were not events (a recording cut short may end in half a line).
    pub skipped_lines: usize,
}

/// Parses the header line of an asciicast v2 text (`postern_core::cast::Header`).
pub fn parse_header(line: &str) -> anyhow::Result<Header> {
    Header::parse(line).map_err(|e| match e {
        HeaderError::NotJson(e) => {
            anyhow::anyhow!("the recording's first line is not a JSON header: {e}")
        }
        HeaderError::NotVersion2 => anyhow::anyhow!("the recording is not asciicast version 2"),
    })
}

/// What one line after the header is.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// An output event: played.
    Output(Output),
    /// Another event (input, resize, marker) or a blank line: skipped.
    Other,
    /// Not an event (a recording cut short may end in half a line): counted.
    NotAnEvent,
}

/// Reads one line after the header.
pub fn parse_event(line: &str) -> Line {
    if line.trim().is_empty() {
        return Line::Other;
    }
    match serde_json::from_str::<(f64, String, String)>(line) {
        Ok((time, code, data)) if time.is_finite() && time >= 0.0 => {
            if code == "o" {
                Line::Output(Output { time, data })
            } else {
                Line::Other
            }
        }
        _ => Line::NotAnEvent,
    }
}

/// Parses a whole asciicast v2 text (`postern play` reads a recording line by line as it
/// arrives; this is the same reading at once).
#[cfg(test)]
pub fn parse(text: &str) -> anyhow::Result<Cast> {
    let mut lines = text.lines();
    let header = parse_header(lines.next().unwrap_or_default())?;
    let mut output = Vec::new();
    let mut skipped_lines = 0;
    for line in lines {
        match parse_event(line) {
            Line::Output(ev) => output.push(ev),
            Line::Other => {}
            Line::NotAnEvent => skipped_lines += 1,
        }
    }
    Ok(Cast {
        header,
        output,
        skipped_lines,
    })
}

/// How long to wait before an event at `time` after one at `prev`, at `speed` (> 0): the
/// recorded gap divided by the speed, never negative and at most [`MAX_IDLE`].
pub fn delay(prev: f64, time: f64, speed: f64) -> Duration {
    let secs = ((time - prev) / speed).clamp(0.0, MAX_IDLE.as_secs_f64());
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "{\"version\": 2, \"width\": 80, \"height\": 24}\n\
        [0.5, \"o\", \"$ \"]\n\
        [1.0, \"i\", \"ls\\r\"]\n\
        [1.25, \"o\", \"ls\\r\\n\"]\n\
        [2.0, \"r\", \"100x40\"]\n\
        [9.0, \"o\", \"a  b\\r\\n\"]\n\
        [9.5, \"o\", \"trunc";

    #[test]
    fn keeps_output_skips_input_and_counts_a_cut_last_line() {
        let c = parse(SAMPLE).unwrap();
        assert_eq!(c.header.width, Some(80));
        let data: Vec<&str> = c.output.iter().map(|o| o.data.as_str()).collect();
        assert_eq!(data, ["$ ", "ls\r\n", "a  b\r\n"]);
        assert_eq!(c.skipped_lines, 1);
    }

    #[test]
    fn rejects_other_formats() {
        assert!(parse("").is_err());
        assert!(parse("{\"version\": 1}\n").is_err());
        assert!(parse("[0.1, \"o\", \"x\"]\n").is_err());
    }

    #[test]
    fn delay_divides_by_speed_and_caps_idle_time() {
        assert_eq!(delay(0.5, 1.25, 1.0), Duration::from_millis(750));
        assert_eq!(delay(0.5, 1.25, 2.0), Duration::from_millis(375));
        assert_eq!(delay(1.25, 9.0, 1.0), MAX_IDLE);
        assert_eq!(delay(2.0, 1.0, 1.0), Duration::ZERO);
    }
}
