//! [`EvalReport`]: per seed per-class IoU, mIoU and FB-IoU; across seeds mean and 95 % interval;
//! wall time. Serialises to JSON (values are fractions in [0, 1]) and prints as a table
//! (percentages).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::engine::SeedScores;
use super::stats::Interval;
use super::EvalOptions;
use crate::data::{ClassId, FewShotDataset};

/// One class's score in one seed: `Σ I / Σ U` over its episodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    pub class: ClassId,
    pub name: String,
    /// `None` when the summed union is 0 (left out of the mIoU).
    pub iou: Option<f64>,
    pub intersection: u64,
    pub union: u64,
    pub episodes: u64,
}

/// The scores of one seed's episode list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    pub episodes: u64,
    pub miou: Option<f64>,
    pub fb_iou: Option<f64>,
    pub background_iou: Option<f64>,
    pub foreground_iou: Option<f64>,
    pub classes: Vec<ClassScore>,
}

/// A class's IoU across seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassInterval {
    pub class: ClassId,
    pub name: String,
    pub iou: Option<Interval>,
}

/// The result of evaluating one method on one fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// "mce", or a baseline's name.
    pub method: String,
    pub dataset: String,
    pub fold: usize,
    pub n_folds: usize,
    pub shots: usize,
    pub episodes_per_seed: usize,
    pub seeds: Vec<SeedResult>,
    /// Mean and interval over seeds of each seed's mIoU.
    pub miou: Option<Interval>,
    /// Mean and interval over seeds of each seed's FB-IoU.
    pub fb_iou: Option<Interval>,
    pub classes: Vec<ClassInterval>,
    /// Seconds of the episode loop (features already computed), all seeds.
    pub wall_seconds: f64,
    pub episodes_per_second: f64,
    /// Free-form facts about the run (checkpoint, chosen feature, threshold, ...).
    pub notes: Vec<String>,
}

fn class_name(ds: &dyn FewShotDataset, class: ClassId) -> String {
    ds.catalog()
        .class_name(class)
        .map_or_else(|| format!("class {class}"), str::to_string)
}

impl SeedResult {
    fn new(ds: &dyn FewShotDataset, seed: u64, scores: &SeedScores) -> Self {
        let s = scores.accumulator.summary();
        SeedResult {
            seed,
            episodes: s.episodes,
            miou: s.miou,
            fb_iou: s.fb_iou,
            background_iou: s.background_iou,
            foreground_iou: s.foreground_iou,
            classes: s
                .classes
                .iter()
                .map(|c| ClassScore {
                    class: c.class,
                    name: class_name(ds, c.class),
                    iou: c.iou,
                    intersection: c.sums.intersection,
                    union: c.sums.union,
                    episodes: c.sums.episodes,
                })
                .collect(),
        }
    }
}

impl EvalReport {
    /// Assemble the report of `scores` (one per seed of `opts`, same order).
    pub fn new(
        method: &str,
        ds: &dyn FewShotDataset,
        opts: &EvalOptions,
        scores: &[SeedScores],
        wall_seconds: f64,
    ) -> Self {
        let seeds: Vec<SeedResult> = opts
            .seeds
            .iter()
            .zip(scores)
            .map(|(&seed, s)| SeedResult::new(ds, seed, s))
            .collect();
        let over_seeds = |f: &dyn Fn(&SeedResult) -> Option<f64>| {
            Interval::from_values(&seeds.iter().filter_map(f).collect::<Vec<_>>())
        };
        let mut per_class: BTreeMap<ClassId, (String, Vec<f64>)> = BTreeMap::new();
        for s in &seeds {
            for c in &s.classes {
                let entry = per_class.entry(c.class).or_insert((c.name.clone(), vec![]));
                entry.1.extend(c.iou);
            }
        }
        let episodes: u64 = seeds.iter().map(|s| s.episodes).sum();
        EvalReport {
            method: method.to_string(),
            dataset: ds.name().to_string(),
            fold: opts.fold,
            n_folds: opts.n_folds,
            shots: opts.shots,
            episodes_per_seed: opts.episodes,
            miou: over_seeds(&|s| s.miou),
            fb_iou: over_seeds(&|s| s.fb_iou),
            classes: per_class
                .into_iter()
                .map(|(class, (name, v))| ClassInterval {
                    class,
                    name,
                    iou: Interval::from_values(&v),
                })
                .collect(),
            seeds,
            wall_seconds,
            episodes_per_second: episodes as f64 / wall_seconds.max(1e-9),
            notes: vec![],
        }
    }
}

/// `45.67` for 0.4567, `-` for none.
fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{:.2}", 100.0 * v))
}

/// `45.67 ± 1.23` (mean ± half width), `-` for none.
fn pct_interval(i: Option<&Interval>) -> String {
    i.map_or_else(
        || "-".to_string(),
        |i| format!("{:.2} ± {:.2}", 100.0 * i.mean, 100.0 * i.half_width),
    )
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seeds: Vec<String> = self.seeds.iter().map(|s| s.seed.to_string()).collect();
        writeln!(
            f,
            "{} — {} fold {}/{}, {}-shot, {} episodes × {} seed(s) ({}), IoU in %",
            self.method,
            self.dataset,
            self.fold,
            self.n_folds,
            self.shots,
            self.episodes_per_seed,
            self.seeds.len(),
            seeds.join(",")
        )?;
        write!(f, "{:<22}", "class")?;
        for s in &seeds {
            write!(f, " {:>8}", format!("seed {s}"))?;
        }
        writeln!(f, "  {:>16}", "mean ± 95% CI")?;
        let by_class = |c: ClassId, s: &super::SeedResult| {
            s.classes.iter().find(|x| x.class == c).and_then(|x| x.iou)
        };
        for c in &self.classes {
            write!(f, "{:<22}", format!("{} ({})", c.name, c.class))?;
            for s in &self.seeds {
                write!(f, " {:>8}", pct(by_class(c.class, s)))?;
            }
            writeln!(f, "  {:>16}", pct_interval(c.iou.as_ref()))?;
        }
        type Pick = fn(&SeedResult) -> Option<f64>;
        let rows: [(&str, Pick, Option<&Interval>); 2] = [
            ("mIoU", |s| s.miou, self.miou.as_ref()),
            ("FB-IoU", |s| s.fb_iou, self.fb_iou.as_ref()),
        ];
        for (name, pick, interval) in rows {
            write!(f, "{name:<22}")?;
            for s in &self.seeds {
                write!(f, " {:>8}", pct(pick(s)))?;
            }
            writeln!(f, "  {:>16}", pct_interval(interval))?;
        }
        if let Some(i) = &self.miou {
            match &i.note {
                Some(note) => writeln!(f, "mIoU interval: {note}")?,
                None => writeln!(
                    f,
                    "mIoU {:.0}% interval (Student t, {} dof): [{:.2}, {:.2}]",
                    100.0 * i.confidence,
                    i.n - 1,
                    100.0 * i.low,
                    100.0 * i.high
                )?,
            }
        }
        writeln!(
            f,
            "wall {:.1} s, {:.1} episodes/s",
            self.wall_seconds, self.episodes_per_second
        )?;
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}
