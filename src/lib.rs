//! crcd: reproducible ablations of Complementary Relation Contrastive
//! Distillation (Zhu et al., CVPR 2021) on libtorch.

pub mod config;
pub mod data;
pub mod distill;
pub mod models;
pub mod train;
