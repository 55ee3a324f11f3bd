//! Whether a writer compresses its chunk messages. `auto` measures how fast long bursts
//! of chunk data get through with and without zstd (the push rate, which flow control
//! ties to the slowest receiver) and keeps the faster, trying the other again now and
//! then: on a slow link compression wins, on a fast one its CPU costs more than the
//! bytes it saves. Pure: fed with bytes pushed and instants.

use std::time::{Duration, Instant};

/// The `compression` setting of a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Measure, and keep what moves chunk data faster (default).
    #[default]
    Auto,
    /// Compress every message large enough to gain from it.
    Always,
    /// Send chunk data as it is (manifests and other messages are still compressed).
    Never,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "always" => Ok(Mode::Always),
            "never" => Ok(Mode::Never),
            other => Err(format!(
                "{other:?} is not one of \"auto\", \"always\", \"never\""
            )),
        }
    }
}

/// Chunk data pushed after a switch before the rate counts: what flow control lets
/// be in flight (16 MiB beyond the slowest receiver, 16 MiB queued) still moves at
/// the old setting's pace.
pub const SETTLE_BYTES: u64 = 32 << 20;
/// Chunk data over which a rate is measured.
pub const EPOCH_BYTES: u64 = 64 << 20;
/// A writer with nothing to push for longer than this ends a burst: its partial
/// measurement is dropped (idle time says nothing about either setting). Waiting for
/// receivers with chunks queued is part of the burst: that is the link's pace.
pub const BURST_GAP: Duration = Duration::from_millis(250);
/// Measured epochs with the chosen setting before the other one is tried again.
pub const PROBE_EVERY: u32 = 8;
/// Bursts a probe may end unmeasured (too short) before the setting it left is
/// taken back, so short transfers do not keep going out with an untried setting.
pub const PROBE_BURSTS: u32 = 2;

/// The choice for one writer's chunk messages.
#[derive(Debug)]
pub struct Compression {
    mode: Mode,
    on: bool,
    /// Bytes pushed in the current epoch, settling included.
    bytes: u64,
    /// When the measured part of the epoch started (after settling).
    measured_from: Option<Instant>,
    /// Since when the writer has had nothing to push.
    idle_since: Option<Instant>,
    /// Bursts the current probe saw end unmeasured.
    probe_bursts: u32,
    /// Bytes per second measured without ([0]) and with ([1]) compression.
    rate: [Option<f64>; 2],
    since_probe: u32,
    probing: bool,
}

impl Compression {
    pub fn new(mode: Mode) -> Self {
        Compression {
            mode,
            on: mode != Mode::Never,
            bytes: 0,
            measured_from: None,
            idle_since: None,
            probe_bursts: 0,
            rate: [None, None],
            since_probe: 0,
            probing: false,
        }
    }

    /// Whether the next chunk message is compressed.
    pub fn on(&self) -> bool {
        self.on
    }

    /// Bytes per second measured without and with compression, where known.
    pub fn rates(&self) -> [Option<f64>; 2] {
        self.rate
    }

    /// The writer has pushed everything it had (called each time its queue runs dry).
    pub fn drained(&mut self, now: Instant) {
        self.idle_since.get_or_insert(now);
    }

    /// A chunk message carrying `bytes` of chunk data was pushed at `now`.
    pub fn pushed(&mut self, bytes: u64, now: Instant) {
        if self.mode != Mode::Auto {
            return;
        }
        if let Some(idle) = self.idle_since.take()
            && now.saturating_duration_since(idle) > BURST_GAP
        {
            self.burst_ended();
        }
        self.bytes += bytes;
        if self.bytes < SETTLE_BYTES {
            return;
        }
        let Some(from) = self.measured_from else {
            self.measured_from = Some(now);
            return;
        };
        let measured = self.bytes - SETTLE_BYTES;
        if measured < EPOCH_BYTES {
            return;
        }
        let secs = now.saturating_duration_since(from).as_secs_f64();
        if secs > 0.0 {
            let r = measured as f64 / secs;
            let slot = &mut self.rate[usize::from(self.on)];
            // A probe's measurement stands alone (the one it replaces is at least 8
            // epochs old); the chosen setting's are averaged, half the new and half the
            // old, so one noisy epoch does not flip the choice.
            *slot = Some(match *slot {
                Some(old) if !self.probing => (old + r) / 2.0,
                _ => r,
            });
        }
        self.decide();
        self.restart();
    }

    /// A burst ended before its epoch was measured.
    fn burst_ended(&mut self) {
        if self.bytes > 0 && self.probing {
            self.probe_bursts += 1;
            if self.probe_bursts >= PROBE_BURSTS {
                self.on = !self.on;
                self.probing = false;
                self.since_probe = 0;
                self.probe_bursts = 0;
            }
        }
        self.restart();
    }

    fn decide(&mut self) {
        self.probe_bursts = 0;
        if self.probing {
            self.probing = false;
            self.since_probe = 0;
            if let [Some(off), Some(on)] = self.rate {
                self.on = on >= off;
            }
            return;
        }
        self.since_probe += 1;
        let other_unknown = self.rate[usize::from(!self.on)].is_none();
        if other_unknown || self.since_probe >= PROBE_EVERY {
            self.on = !self.on;
            self.probing = true;
        }
    }

    fn restart(&mut self) {
        self.bytes = 0;
        self.measured_from = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Pushes `total` bytes in 1 MiB messages at the rate `rate(on)` (bytes per second).
    fn run(c: &mut Compression, t: &mut Instant, total: u64, rate: impl Fn(bool) -> f64) {
        let mut sent = 0;
        while sent < total {
            let step = Duration::from_secs_f64(MIB as f64 / rate(c.on()));
            *t += step;
            c.pushed(MIB, *t);
            sent += MIB;
        }
    }

    #[test]
    fn auto_keeps_the_faster_setting_and_tries_the_other_again() {
        let mut t = Instant::now();
        let mut c = Compression::new(Mode::Auto);
        assert!(c.on(), "starts compressed: safe on a slow link");
        // A fast link: sending as is moves 300 MB/s, compressing 200 MB/s.
        let fast = |on: bool| if on { 200e6 } else { 300e6 };
        run(&mut c, &mut t, 2 * (SETTLE_BYTES + EPOCH_BYTES), fast);
        assert!(!c.on(), "{:?}", c.rates());
        let mut on_epochs = 0;
        for _ in 0..40 {
            run(&mut c, &mut t, SETTLE_BYTES + EPOCH_BYTES, fast);
            on_epochs += u32::from(c.on());
        }
        assert!(!c.on());
        assert!(
            (1..=8).contains(&on_epochs),
            "probes compression now and then, not often: {on_epochs} of 40"
        );
        // The link slows down (or the data got more compressible): compression wins.
        let slow = |on: bool| if on { 120e6 } else { 60e6 };
        run(&mut c, &mut t, 12 * (SETTLE_BYTES + EPOCH_BYTES), slow);
        let mut on_epochs = 0;
        for _ in 0..10 {
            run(&mut c, &mut t, SETTLE_BYTES + EPOCH_BYTES, slow);
            on_epochs += u32::from(c.on());
        }
        assert!(on_epochs >= 8, "{on_epochs} of 10, {:?}", c.rates());
    }

    #[test]
    fn pauses_and_short_bursts_measure_nothing() {
        let mut t = Instant::now();
        let mut c = Compression::new(Mode::Auto);
        for _ in 0..100 {
            // 32 MiB bursts: each one still settling when it ends.
            run(&mut c, &mut t, SETTLE_BYTES, |_| 1e9);
            c.drained(t);
            t += Duration::from_secs(1);
        }
        assert!(c.on());
        assert_eq!(c.rates(), [None, None]);
    }

    #[test]
    fn waiting_for_receivers_is_part_of_the_burst() {
        let mut t = Instant::now();
        let mut c = Compression::new(Mode::Auto);
        // A slow link: 4 MiB per report, half a second apart, with chunks still queued
        // (no `drained`); compressed, twice the data gets through.
        for _ in 0..200 {
            let per_4mib = if c.on() { 0.25 } else { 0.5 };
            for _ in 0..4 {
                c.pushed(MIB, t);
            }
            t += Duration::from_secs_f64(per_4mib);
        }
        assert!(c.on(), "{:?}", c.rates());
        assert!(
            c.rates()[0].is_some(),
            "the probe without compression finished"
        );
    }

    #[test]
    fn a_probe_that_only_sees_short_bursts_is_taken_back() {
        let mut t = Instant::now();
        let mut c = Compression::new(Mode::Auto);
        let fast = |on: bool| if on { 100e6 } else { 300e6 };
        run(&mut c, &mut t, SETTLE_BYTES + EPOCH_BYTES, fast);
        assert!(!c.on(), "probing without compression");
        for _ in 0..PROBE_BURSTS {
            run(&mut c, &mut t, 16 * MIB, fast);
            c.drained(t);
            t += Duration::from_secs(1);
        }
        run(&mut c, &mut t, MIB, fast);
        assert!(c.on(), "back to the measured setting");
    }

    #[test]
    fn fixed_modes_never_change() {
        let mut t = Instant::now();
        for (mode, on) in [(Mode::Always, true), (Mode::Never, false)] {
            let mut c = Compression::new(mode);
            run(&mut c, &mut t, 1 << 30, |on| if on { 1e6 } else { 1e9 });
            assert_eq!(c.on(), on);
        }
        assert_eq!("auto".parse(), Ok(Mode::Auto));
        assert!("fast".parse::<Mode>().is_err());
    }
}
