//! `lbctl join-check`'s output: one aligned line per step (result, meaning,
//! fix), the notes and a verdict; or the same as one JSON object.

use std::io::{self, Write};

use super::report::{NAMES, Report, Status};

/// Prints one line per step, then the notes and the verdict.
pub(crate) fn lines(out: &mut impl Write, report: &Report) -> io::Result<()> {
    let name_width = NAMES.iter().map(|n| n.len()).max().unwrap_or(0);
    for step in &report.steps {
        let fix = step
            .fix
            .as_ref()
            .map(|fix| format!(" — fix: {fix}"))
            .unwrap_or_default();
        writeln!(
            out,
            "{} {:name_width$}  {:4}  {}{fix}",
            step.step,
            step.name,
            step.result.word(),
            step.detail
        )?;
    }
    for note in &report.notes {
        writeln!(out, "note: {note}")?;
    }
    let failed: Vec<String> = report
        .steps
        .iter()
        .filter(|s| s.result == Status::Fail)
        .map(|s| format!("{} {}", s.step, s.name))
        .collect();
    if failed.is_empty() {
        writeln!(
            out,
            "kubeadm's token discovery would succeed through {}",
            report.endpoint
        )
    } else {
        writeln!(
            out,
            "kubeadm join through {} would fail: step {}",
            report.endpoint,
            failed.join(", step ")
        )
    }
}

/// Prints the report as one JSON object and a newline.
pub(crate) fn json(out: &mut impl Write, report: &Report) -> io::Result<()> {
    serde_json::to_writer(&mut *out, report)?;
    writeln!(out)
}
