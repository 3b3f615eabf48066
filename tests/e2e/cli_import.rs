//! `tollgate import litellm`: a LiteLLM proxy config becomes a Tollgate config that validates and
//! serves. Deployments sharing a `model_name` become one model with several targets; what cannot
//! be converted is listed on stderr.

use std::time::Duration;

use crate::harness::procs::{run_tollgate, Agent, TempDir, SIM_MODEL};
use crate::harness::{chat_body, post_json, Sim};

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn a_litellm_config_imports_validates_and_serves() {
    let sim = Sim::start(&[]);
    let dir = TempDir::new("import");
    let litellm = dir.path().join("litellm.yaml");
    std::fs::write(
        &litellm,
        format!(
            "model_list:
  - model_name: team-chat
    litellm_params:
      model: hosted_vllm/{SIM_MODEL}
      api_base: http://{addr}/v1
      api_key: os.environ/SIM_KEY
      rpm: 100
  - model_name: team-chat
    litellm_params:
      model: azure/gpt-4o
      api_base: https://example.openai.azure.com
  - model_name: team-chat
    litellm_params:
      model: openai/{SIM_MODEL}
      api_base: http://{addr}/v1/
      api_key: os.environ/SIM_KEY
      weight: 3
router_settings:
  routing_strategy: simple-shuffle
",
            addr = sim.addr
        ),
    )
    .expect("writing the LiteLLM config");
    let out = run_tollgate(
        &["import", "litellm", litellm.to_str().expect("utf-8")],
        TIMEOUT,
    );
    assert!(out.status.success(), "{out:#?}");
    for needle in ["azure/", "`rpm`", "router_settings"] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
    let converted = dir.path().join("tollgate.yaml");
    std::fs::write(
        &converted,
        format!(
            // LiteLLM's own virtual keys are not imported; this client sends none.
            "{}kernel: {{ enabled: off }}\nauth: {{ mode: open }}\n",
            out.stdout.replace(
                "./tollgate-data",
                &dir.path().join("data").display().to_string()
            )
        ),
    )
    .expect("writing the converted config");
    let out = run_tollgate(
        &["validate", "--config", converted.to_str().expect("utf-8")],
        TIMEOUT,
    );
    assert!(out.status.success(), "{out:#?}");

    let agent = Agent::start_file(&converted, &dir.path().join("data"));
    let r = post_json(
        agent.addr,
        "/v1/chat/completions",
        &chat_body("team-chat", "imported", 2, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let row = agent.row_of(&r);
    assert_eq!(row.requested_model.as_deref(), Some("team-chat"));
    assert_eq!(row.served_model.as_deref(), Some(SIM_MODEL));
}
