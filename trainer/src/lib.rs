//! # mce-train
//!
//! Episodic meta-training and evaluation of MCE. This crate holds the dataset layer for now:
//! benchmark formats (PASCAL-5i, COCO-20i, FSS-1000, MSRC-v2, plain folders) behind the
//! [`data::FewShotDataset`] trait, the field's protocol (2048-pixel threshold, training-image
//! filter, fold splits), reproducible episode sampling and a data checker.
//!
//! Data flow:
//!
//! ```text
//! files on disk ──format module──▶ Catalog (classes, images, labels)
//!        ──scan (once, cached)──▶ per-image class pixel counts
//!        ──fold rule + protocol──▶ ClassPool (train: filtered, test)
//!        ──EpisodeSampler (seeded)──▶ Episode {class, query, supports}
//!        ──load──▶ RgbImage + Mask (1 = class, 0 = other, 255 = ignore) ──▶ mce-core preprocess
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
