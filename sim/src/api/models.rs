//! `GET /v1/models`: the served models, listed as vLLM lists them (with `max_model_len`).

use serde::Serialize;

use super::unix_now;
use crate::body::to_json;

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<Model<'a>>,
}

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    root: &'a str,
    parent: (),
    max_model_len: u64,
}

pub fn render(models: &[String], max_model_len_tokens: u64) -> Vec<u8> {
    let created = unix_now();
    to_json(&ModelList {
        object: "list",
        data: models
            .iter()
            .map(|id| Model {
                id,
                object: "model",
                created,
                owned_by: "tollgate-sim",
                root: id,
                parent: (),
                max_model_len: max_model_len_tokens,
            })
            .collect(),
    })
}
