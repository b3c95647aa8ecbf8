//! Flag-style configs of checkpoints written before heads were types, migrated when read.
//!
//! Those configs had every head width at the top level and chose the head with switches
//! (`use_cross`, `use_similarity`, `matching_prior`, `prior_residual`, `decoder_input`,
//! `shot_fusion`). Each combination that was a head maps to one [`HeadConfig`]:
//!
//! | flags | head |
//! |---|---|
//! | `decoder_input: full`, no matching prior, no residual | [`HeadConfig::Paper`]; `use_cross: false` / `use_similarity: false` are the paper's ablations |
//! | `decoder_input: matching`, `matching_prior`, `prior_residual`, no `use_cross` | [`HeadConfig::Matching`] (the shipped default of that time) |
//!
//! The other combinations (the paper head with the matching prior appended, the class-agnostic
//! input without the residual skip) were experiments no shipped model uses; reading one is an error
//! that names the flags.

use super::{
    Attention, Branches, DecoderConfig, HeadConfig, InputResize, MatchingConfig, MceConfig,
    PaperAblation, PaperConfig, SimilarityReduce,
};
use crate::backbone::BackboneKind;
use serde::{Deserialize, Deserializer};

/// The config layout of this version.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Current {
    backbone: BackboneKind,
    image_size: usize,
    #[serde(default)]
    resize: InputResize,
    head: HeadConfig,
}

/// `decoder_input` of the flag-style config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DecoderInput {
    #[default]
    Full,
    Matching,
}

/// `shot_fusion` of the flag-style config: it had this one value.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ShotFusion {
    Average,
}

/// The flag-style config, field for field.
#[derive(Debug, Clone, Deserialize)]
pub struct FlagConfig {
    backbone: BackboneKind,
    image_size: usize,
    reduce_dim: usize,
    d_model: usize,
    heads: usize,
    mlp_ratio: usize,
    levels: Vec<usize>,
    decoder_dim: usize,
    aspp_rates: [usize; 3],
    dropout: f32,
    branches: Branches,
    similarity: SimilarityReduce,
    attention: Attention,
    #[allow(dead_code)]
    shot_fusion: ShotFusion,
    use_similarity: bool,
    use_cross: bool,
    #[serde(default)]
    matching_prior: bool,
    #[serde(default)]
    prior_residual: bool,
    #[serde(default)]
    decoder_input: DecoderInput,
}

impl TryFrom<FlagConfig> for MceConfig {
    type Error = String;

    fn try_from(f: FlagConfig) -> Result<Self, String> {
        let decoder = DecoderConfig {
            dim: f.decoder_dim,
            aspp_rates: f.aspp_rates,
        };
        let flags = (f.decoder_input, f.matching_prior, f.prior_residual);
        let head = match flags {
            (DecoderInput::Full, false, false) => {
                let ablation = match (f.use_cross, f.use_similarity) {
                    (true, true) => PaperAblation::None,
                    (false, true) => PaperAblation::WithoutCrossMap,
                    (true, false) => PaperAblation::WithoutSimilarity,
                    (false, false) => {
                        return Err(
                            "legacy config without both cross map and similarity is no head".into(),
                        )
                    }
                };
                HeadConfig::Paper(PaperConfig {
                    reduce_dim: f.reduce_dim,
                    d_model: f.d_model,
                    heads: f.heads,
                    mlp_ratio: f.mlp_ratio,
                    levels: f.levels,
                    dropout: f.dropout,
                    decoder,
                    branches: f.branches,
                    similarity: f.similarity,
                    attention: f.attention,
                    ablation,
                })
            }
            (DecoderInput::Matching, true, true) if !f.use_cross && f.use_similarity => {
                HeadConfig::Matching(MatchingConfig {
                    decoder,
                    similarity: f.similarity,
                })
            }
            _ => {
                return Err(format!(
                "legacy config flags decoder_input {:?}, matching_prior {}, prior_residual {}, \
                     use_cross {}, use_similarity {} were an experiment, not one of the heads \
                     (paper, matching); retrain with `mce-train train --head ...`",
                f.decoder_input, f.matching_prior, f.prior_residual, f.use_cross, f.use_similarity
            ))
            }
        };
        Ok(MceConfig {
            backbone: f.backbone,
            image_size: f.image_size,
            resize: InputResize::Letterbox,
            head,
        })
    }
}

/// Read either layout: a config with a `head` is current, one without is flag-style and migrated.
pub(super) fn deserialize_any_version<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<MceConfig, D::Error> {
    use serde::de::Error;
    let value = serde_json::Value::deserialize(d)?;
    if value.get("head").is_some() {
        let c: Current = serde_json::from_value(value).map_err(D::Error::custom)?;
        return Ok(MceConfig {
            backbone: c.backbone,
            image_size: c.image_size,
            resize: c.resize,
            head: c.head,
        });
    }
    let flags: FlagConfig = serde_json::from_value(value)
        .map_err(|e| D::Error::custom(format!("neither a current nor a legacy config: {e}")))?;
    MceConfig::try_from(flags).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeadKind;

    /// The config in the metadata of `models/mce_edge_msrc_fold0.safetensors` (and of its int8
    /// artifact), verbatim.
    const SHIPPED_FOLD0: &str = r#"{"backbone":"efficientnet_lite0","image_size":320,"reduce_dim":128,"d_model":128,"heads":4,"mlp_ratio":2,"levels":[2,3,4],"decoder_dim":128,"aspp_rates":[3,6,9],"dropout":0.5,"branches":"both","similarity":"mean","attention":"symmetric","shot_fusion":"average","use_similarity":true,"use_cross":false,"matching_prior":true,"prior_residual":true,"decoder_input":"matching"}"#;

    /// The edge preset as the flag-style layout wrote it (no matching fields: the oldest files).
    const OLD_EDGE: &str = r#"{"backbone":"efficientnet_lite0","image_size":320,"reduce_dim":128,"d_model":128,"heads":4,"mlp_ratio":2,"levels":[2,3,4],"decoder_dim":128,"aspp_rates":[3,6,9],"dropout":0.5,"branches":"both","similarity":"mean","attention":"symmetric","shot_fusion":"average","use_similarity":true,"use_cross":true}"#;

    #[test]
    fn the_shipped_flag_config_is_the_matching_head() {
        let c: MceConfig = serde_json::from_str(SHIPPED_FOLD0).unwrap();
        assert_eq!(c, MceConfig::edge_lite0().with_head(HeadKind::Matching));
    }

    #[test]
    fn the_old_edge_preset_is_the_paper_head_and_ablations_map() {
        let c: MceConfig = serde_json::from_str(OLD_EDGE).unwrap();
        assert_eq!(c, MceConfig::edge_lite0());
        let no_cross = OLD_EDGE.replace(r#""use_cross":true"#, r#""use_cross":false"#);
        let c: MceConfig = serde_json::from_str(&no_cross).unwrap();
        assert_eq!(c.paper().unwrap().ablation, PaperAblation::WithoutCrossMap);
    }

    #[test]
    fn the_input_resize_round_trips_and_defaults_to_letterbox() {
        let squash = MceConfig {
            resize: InputResize::Squash,
            ..MceConfig::edge_lite0()
        };
        let text = serde_json::to_string(&squash).unwrap();
        assert!(text.contains(r#""resize":"squash""#), "{text}");
        assert_eq!(serde_json::from_str::<MceConfig>(&text).unwrap(), squash);
        // a current-layout config written before the field existed
        let old = text.replace(r#""resize":"squash","#, "");
        assert!(!old.contains("resize"));
        let c: MceConfig = serde_json::from_str(&old).unwrap();
        assert_eq!(c.resize, InputResize::Letterbox);
        assert_eq!(
            c.input_resize(),
            crate::preprocess::Resize::LongerSidePad(320)
        );
        assert_eq!(
            squash.input_resize(),
            crate::preprocess::Resize::Direct(320)
        );
    }

    #[test]
    fn experimental_flag_combinations_are_named_errors() {
        let prior = OLD_EDGE.replace('}', r#","matching_prior":true}"#);
        let e = serde_json::from_str::<MceConfig>(&prior).unwrap_err();
        assert!(e.to_string().contains("matching_prior true"), "{e}");
        let e = serde_json::from_str::<MceConfig>(r#"{"backbone":"resnet50"}"#).unwrap_err();
        assert!(e.to_string().contains("legacy"), "{e}");
    }
}
