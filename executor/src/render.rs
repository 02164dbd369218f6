//! What `addon` prints for people (without `--json`): each report renders itself, so the command
//! only parses, dispatches and picks JSON or this.
//!
//! Everything goes through [`Human`]: control characters in what a report carries (an addon's
//! name, its stderr in an error, a path from an archive) are shown escaped, never obeyed by the
//! terminal.

use std::io::{self, Write};

use crate::check::{CheckReport, Status};
use crate::engine::{CacheListing, PruneReport};
use crate::report::{AddonResult, PlanReport, RunReport, RunnersReport};
use addon_runners::egress::NetKind;

/// How much to say.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    /// Every detail (`-v`), not only the first clause of each.
    pub verbose: bool,
}

/// A report as people read it.
pub trait Render {
    fn render(&self, out: &mut dyn Write, style: Style) -> io::Result<()>;

    /// Rendered through [`Human`] into `out`.
    fn render_to(&self, out: impl Write, style: Style) -> io::Result<()>
    where
        Self: Sized,
    {
        let mut human = Human(out);
        self.render(&mut human, style)?;
        human.flush()
    }
}

/// A writer for people: control characters are shown escaped (see the module's doc).
pub struct Human<W>(pub W);

impl<W: Write> Write for Human<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(addon_descriptors::for_terminal(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The first clause of a runner's or sandbox's detail (up to the first `; ` or ` (`), for a
/// line a person reads; all of it when `verbose`.
pub fn brief(detail: &str, verbose: bool) -> String {
    if verbose {
        return detail.to_string();
    }
    let end = [detail.find("; "), detail.find(" (")].into_iter().flatten().min().unwrap_or(detail.len());
    let mut head: String = detail[..end].chars().take(120).collect();
    if head.len() < detail.len() {
        head.push_str(" …");
    }
    head
}

impl Render for PlanReport {
    fn render(&self, out: &mut dyn Write, style: Style) -> io::Result<()> {
        let purity = if self.pure { "pure" } else { "impure" };
        writeln!(out, "{} {} ({purity}; {})", self.addon.name, self.addon.version, self.addon.digest)?;
        let network = match self.network {
            NetKind::None => "none (only its own loopback)".to_string(),
            NetKind::Host => {
                "host: the host's own network, everything the host reaches (network.impure: host)".to_string()
            }
            NetKind::Egress if self.network_allow.is_empty() => {
                "egress: public addresses only, never the host, link-local or private ranges".to_string()
            }
            NetKind::Egress => format!(
                "egress: public addresses only, never the host, link-local or private ranges, and {}",
                self.network_allow.join(", ")
            ),
        };
        writeln!(out, "network: {network}")?;
        for c in &self.candidates {
            let usable = c.enabled && c.configured && c.available && c.cannot_build.is_none();
            let mark = if usable { "+" } else { "-" };
            // Why a runner is not there stays whole (it says how to fix it); the rest is the
            // answer first, the detail on -v.
            let reason = if c.available { brief(&c.reason, style.verbose) } else { c.reason.clone() };
            writeln!(
                out,
                "  {mark} {:<10} enabled={:<5} configured={:<5} available={:<5} {reason}",
                c.runner, c.enabled, c.configured, c.available
            )?;
            if let Some(why) = &c.cannot_build {
                writeln!(out, "    cannot build it: {why}")?;
            }
        }
        writeln!(out, "origin: {}", self.identity.origin)?;
        if let Some(note) = &self.identity.note {
            writeln!(out, "note: {note}")?;
        }
        match &self.selected {
            Some(s) => writeln!(out, "selected: {} (sandbox {})", s.runner, s.sandbox.as_deref().unwrap_or("-")),
            None => writeln!(out, "selected: none: {}", self.reason.as_deref().unwrap_or("")),
        }
    }
}

impl Render for CheckReport {
    fn render(&self, out: &mut dyn Write, _: Style) -> io::Result<()> {
        for c in &self.checks {
            let status = match c.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Skip => "SKIP",
            };
            writeln!(out, "{status} {:<18} {:>6} ms  {}", c.name, c.duration_ms, c.detail)?;
        }
        if self.all_passed() {
            return writeln!(out, "{}: all {} checks passed", self.runner, self.checks.len());
        }
        let skipped = if self.skipped > 0 { format!(" ({} skipped)", self.skipped) } else { String::new() };
        writeln!(out, "{}: {} of {} checks did not pass{skipped}", self.runner, self.failed, self.checks.len())
    }
}

impl Render for RunnersReport {
    fn render(&self, out: &mut dyn Write, style: Style) -> io::Result<()> {
        writeln!(out, "runners:")?;
        for r in &self.runners {
            let v = r.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
            let detail = if r.available { brief(&r.detail, style.verbose) } else { r.detail.clone() };
            writeln!(out, "  {} {}{v}: {detail}", if r.available { "+" } else { "-" }, r.name)?;
        }
        writeln!(out, "sandboxes:")?;
        for s in &self.sandboxes {
            let p = &s.probe;
            let detail = if p.available { brief(&p.detail, style.verbose) } else { p.detail.clone() };
            writeln!(out, "  {} {}: {detail}", if p.available { "+" } else { "-" }, p.name)?;
            writeln!(out, "      {}", s.limits)?;
            let networks: Vec<&str> = s.networks.iter().map(|n| n.as_str()).collect();
            match &s.egress_detail {
                Some(why) if p.available => {
                    writeln!(out, "      impure addons: {} (no egress: {why})", networks.join(", "))?
                }
                _ => writeln!(out, "      impure addons: {}", networks.join(", "))?,
            }
        }
        if !style.verbose {
            writeln!(out, "(-v shows every detail; --json all of it)")?;
        }
        Ok(())
    }
}

fn render_entries(
    out: &mut dyn Write,
    verb: &str,
    entries: &[addon_cache::EntryInfo],
    total_size: u64,
) -> io::Result<()> {
    writeln!(out, "{verb}: {}", entries.len())?;
    for e in entries {
        writeln!(out, "  {:<13} {:>12} bytes  {}  {}", e.kind.as_str(), e.size, e.addon, e.key)?;
    }
    writeln!(out, "total size: {total_size} bytes")
}

impl Render for CacheListing {
    fn render(&self, out: &mut dyn Write, _: Style) -> io::Result<()> {
        render_entries(out, "entries", &self.entries, self.total_size)
    }
}

impl Render for PruneReport {
    fn render(&self, out: &mut dyn Write, _: Style) -> io::Result<()> {
        render_entries(out, "removed", &self.removed, self.total_size)
    }
}

/// The addons' results, one line each (the merged output is JSON on stdout, apart).
impl Render for RunReport {
    fn render(&self, out: &mut dyn Write, _: Style) -> io::Result<()> {
        for a in &self.addons {
            // An impure addon's network is said; a pure one's is none.
            let net = match a.network.as_ref().map(|n| (n.policy, n.refused_packets)) {
                Some((NetKind::Egress, Some(refused))) if refused > 0 => {
                    format!(", egress network, {refused} packets refused")
                }
                Some((NetKind::Egress, _)) => ", egress network".to_string(),
                Some((NetKind::Host, _)) => ", host network".to_string(),
                _ => String::new(),
            };
            let how = match (&a.runner, &a.sandbox) {
                (Some(r), Some(s)) => format!(" ({r} in {s}{net}, cache {}, {} ms)", a.cache.as_str(), a.duration_ms),
                (Some(r), None) => format!(" ({r}{net}, {} ms)", a.duration_ms),
                _ => String::new(),
            };
            let name = if a.name.is_empty() { a.source.clone() } else { format!("{}-{}", a.name, a.version) };
            writeln!(out, "{name}: {}{how}", a.result.as_str())?;
            if let (false, Some(e)) = (a.result == AddonResult::Success, &a.error) {
                writeln!(out, "  {e}")?;
            }
        }
        writeln!(out, "output directory: {}", self.output_dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_people_read_is_never_obeyed_by_their_terminal() {
        let mut out = Vec::new();
        write!(Human(&mut out), "addon \x1b]0;pwned\x07 done").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    }

    #[test]
    fn brief_keeps_the_first_clause() {
        assert_eq!(brief("bwrap 0.8.0; seccomp on (v1)", false), "bwrap 0.8.0 …");
        assert_eq!(brief("bwrap 0.8.0; seccomp on", true), "bwrap 0.8.0; seccomp on");
    }
}
