//! # mce-train
//!
//! Episodic meta-training and evaluation of MCE on a workstation, in six parts:
//!
//! - [`data`]: benchmark formats (PASCAL-5i, COCO-20i, FSS-1000, MSRC-v2, plain folders) behind
//!   the [`data::FewShotDataset`] trait, the field's protocol (2048-pixel threshold,
//!   training-image filter, fold splits) and reproducible episode sampling;
//! - `check-data` ([`data::check_data`]): every problem of a dataset in one report;
//! - [`train`]: episodic meta-training of the MCE head on a frozen backbone, from cached
//!   backbone features ([`features`]: exact scales and flips, [`transform`]) or online with
//!   PFENet's augmentation ([`augment`]); SGD with momentum ([`optim`]), validation on the
//!   training classes, checkpoints and bit-for-bit resume;
//! - QAT ([`train::qat`]): quantisation-aware fine-tuning of a trained head for the int8 device;
//! - [`eval`]: a checkpoint on a fold's fixed test episodes over several seeds, scored at the
//!   original label resolution (mIoU, FB-IoU, 95 % Student-t interval across seeds);
//! - [`baselines`]: training-free baselines (all foreground, prototype cosine, nearest
//!   neighbour) on the same episodes and scoring.
//!
//! Data flow:
//!
//! ```text
//! files on disk ──format module──▶ Catalog (classes, images, labels)
//!        ──scan (once, cached)──▶ per-image class pixel counts ──▶ check_data ─▶ DataReport
//!        ──fold rule + protocol──▶ ClassPool (train: filtered, test)
//!        ──EpisodeSampler (seeded)──▶ Episode {class, query, supports}
//!        ──load──▶ RgbImage + Mask (1 = class, 0 = other, 255 = ignore) ──▶ mce-core preprocess
//!
//! train pool ─ validation split ─▶ FeatureStore (frozen backbone) or online batches
//!        ─▶ head steps (SGD) ─▶ best / last checkpoints ─▶ [qat] ─▶ mce-calib, the device
//! test episodes (seeds) ─▶ eval (model) / baselines ─▶ EvalReport (JSON, table)
//! ```
//!
//! Images and masks are decoded with `mce_core::preprocess` (`load_rgb`, `load_mask`), so the
//! trainer and the device read data the same way.

pub mod augment;
pub mod baselines;
pub mod data;
pub mod error;
pub mod eval;
pub mod features;
pub mod optim;
pub mod train;
pub mod transform;

pub use data::{
    check_data, open_dataset, test_episodes, CheckOptions, ClassId, ClassInfo, DataReport,
    DatasetKind, Episode, EpisodeSampler, FewShotDataset, MaskSource, OpenOptions, Protocol,
    Sample, SampleRef,
};
pub use error::{Error, Result};
