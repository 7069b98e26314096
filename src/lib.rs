//! crcd: reproducible ablations of Complementary Relation Contrastive
//! Distillation (Zhu et al., CVPR 2021) on libtorch.

pub mod ablate;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod distill;
pub mod fsutil;
pub mod models;
pub mod report;
pub mod train;
