//! Integration tests of the dataset layer on small fixtures generated in temp dirs (one test
//! binary; each module covers one concern).

mod check;
mod coco;
mod episodes;
mod fixtures;
mod formats;
mod msrc_real;
