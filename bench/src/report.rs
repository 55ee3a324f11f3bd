//! The results as a Markdown table and a PNG bar chart (one panel per workload).

use crate::workloads::Row;
use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::fmt::Write as _;
use std::path::Path;

fn cpu(u: Option<crate::proc::Usage>) -> String {
    u.map_or("–".into(), |u| format!("{:.2} s", u.cpu_s))
}

fn rss(u: Option<crate::proc::Usage>) -> String {
    u.map_or("–".into(), |u| {
        format!("{:.0} MiB", u.max_rss_kib as f64 / 1024.0)
    })
}

pub fn markdown(rows: &[Row], header: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{header}\n");
    let _ = writeln!(
        s,
        "| workload | system | receivers | result | detail | CPU (all processes) | writer CPU | peak RSS (largest process) | writer bytes sent | broker bytes in / out |"
    );
    let _ = writeln!(
        s,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for r in rows {
        let value = if r.unit.starts_with("ms") {
            format!("{:.1} {}", r.value, r.unit)
        } else {
            format!("{:.2} {}", r.value, r.unit)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.workload,
            r.system,
            r.receivers,
            value,
            r.detail,
            cpu(r.usage),
            cpu(r.writer),
            rss(r.usage),
            r.bytes
                .map_or("–".into(), |b| format!("{:.2} MB", b as f64 / 1e6)),
            r.wire.map_or("–".into(), |(i, o)| format!(
                "{:.2} / {:.2} MB",
                i as f64 / 1e6,
                o as f64 / 1e6
            )),
        );
    }
    s
}

/// Registers a TrueType font for the chart's text (Debian's DejaVu).
fn load_font() -> Result<()> {
    let candidates = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];
    let path = candidates
        .iter()
        .find(|p| Path::new(p).is_file())
        .context("no TrueType font found: apt-get install fonts-dejavu-core")?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path}: not a usable font"))?;
    Ok(())
}

pub fn chart(rows: &[Row], out: &Path) -> Result<()> {
    load_font()?;
    let mut workloads: Vec<&str> = rows.iter().map(|r| r.workload).collect();
    workloads.dedup();
    let (w, h) = (1400u32, 420 * workloads.len().div_ceil(2) as u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((workloads.len().div_ceil(2), 2));
        for (wl, area) in workloads.iter().zip(panels.iter()) {
            let these: Vec<&Row> = rows.iter().filter(|r| r.workload == *wl).collect();
            let unit = these.first().map_or("", |r| r.unit);
            // Latencies span milliseconds to seconds: drawn on a log10 axis.
            let log = unit.starts_with("ms");
            let scale = |v: f64| if log { v.max(0.1).log10() + 1.0 } else { v };
            let max = these
                .iter()
                .map(|r| scale(r.value))
                .fold(0.0, f64::max)
                .max(1e-3)
                * 1.15;
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!(
                        "{wl} ({unit}{}, lower is better)",
                        if log { ", log scale" } else { "" }
                    ),
                    ("sans-serif", 22),
                )
                .margin(12)
                .x_label_area_size(10)
                .y_label_area_size(10)
                .build_cartesian_2d(0.0..max, 0.0..these.len() as f64)?;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(2)
                .y_label_formatter(&|_| String::new())
                .x_label_style(("sans-serif", 14))
                .x_label_formatter(&|v| {
                    if log {
                        let ms = 10f64.powf(*v - 1.0);
                        if ms < 1.0 {
                            format!("{ms:.1}")
                        } else {
                            format!("{ms:.0}")
                        }
                    } else {
                        format!("{v:.1}")
                    }
                })
                .light_line_style(WHITE)
                .draw()?;
            for (i, r) in these.iter().enumerate() {
                let color = if r.system.starts_with("mqsync") {
                    RGBColor(120, 170, 220)
                } else {
                    RGBColor(200, 200, 200)
                };
                chart.draw_series([Rectangle::new(
                    [(0.0, i as f64 + 0.1), (scale(r.value), i as f64 + 0.9)],
                    color.filled(),
                )])?;
                let mut label = if r.receivers == 0 {
                    format!("{}: {:.2}", r.system, r.value)
                } else {
                    format!("{} ×{}: {:.2}", r.system, r.receivers, r.value)
                };
                // Fan-out is about the writer: its CPU and bytes beside the wall time.
                if r.workload == "fan-out"
                    && let (Some(w), Some(b)) = (r.writer, r.bytes)
                {
                    label.push_str(&format!(
                        " (writer {:.2} s CPU, {:.0} MB sent)",
                        w.cpu_s,
                        b as f64 / 1e6
                    ));
                }
                chart.draw_series([Text::new(
                    label,
                    (max * 0.01, i as f64 + 0.75),
                    TextStyle::from(("sans-serif", 15).into_font())
                        .pos(Pos::new(HPos::Left, VPos::Top)),
                )])?;
            }
        }
        root.present()?;
    }
    let file = std::fs::File::create(out)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(&buf)?;
    Ok(())
}
