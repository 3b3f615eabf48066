//! `tollgate report chargeback`: what each team (or project, cost center, key, user) spent in a
//! UTC month, against the month before and against its monthly budget.
//!
//! - **The change** is against the previous calendar month's cost. A group that spent nothing
//!   then has no percentage, only its cost. A group that spent last month and nothing now
//!   still gets a row, at −100 %.
//! - **Budget use** comes from the configuration's `budgets:`. A rule counts for a group when
//!   its scope names exactly that group (`scope: {team: search}`, nothing else) and its window
//!   is a month. Use is the larger of cost ÷ the USD limit and tokens ÷ the token limit.

use serde::Serialize;

use super::query::{Format, GroupBy, SummaryRow};
use crate::governance::policy::{BudgetRule, Scope};
use crate::governance::window::Window;

/// One group's month.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChargebackRow {
    #[serde(flatten)]
    pub month: SummaryRow,
    pub previous_cost_usd: f64,
    /// Cost change against the previous month, in percent (`None` when that was zero).
    pub change_pct: Option<f64>,
    /// The monthly budget naming this group, and how much of it the month used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetUse>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetUse {
    pub name: String,
    pub limit_usd: Option<f64>,
    pub limit_tokens: Option<u64>,
    pub used_pct: f64,
}

/// The value a scope names when it names exactly one group of kind `by`, and nothing else.
fn sole_owner(scope: &Scope, by: GroupBy) -> Option<&str> {
    let fields = [
        (GroupBy::Team, scope.team.as_deref()),
        (GroupBy::Project, scope.project.as_deref()),
        (GroupBy::User, scope.user.as_deref()),
        (GroupBy::Workflow, scope.workflow.as_deref()),
        (GroupBy::CostCenter, scope.cost_center.as_deref()),
        (GroupBy::Key, scope.key.as_deref()),
    ];
    let others_set = scope.session.is_some()
        || scope.model.is_some()
        || scope.cgroup.is_some()
        || scope.container.is_some()
        || fields.iter().any(|(k, v)| *k != by && v.is_some());
    if others_set {
        return None;
    }
    fields.iter().find(|(k, _)| *k == by).and_then(|(_, v)| *v)
}

fn budget_use(row: &SummaryRow, rule: &BudgetRule) -> BudgetUse {
    let tokens = row.input_tokens + row.output_tokens;
    let by_cost = rule.micro_usd.map(|l| {
        if l == 0 {
            100.0
        } else {
            row.cost_usd * 1e6 / l as f64 * 100.0
        }
    });
    let by_tokens = rule.tokens.map(|l| {
        if l == 0 {
            100.0
        } else {
            tokens as f64 / l as f64 * 100.0
        }
    });
    BudgetUse {
        name: rule.name.clone(),
        limit_usd: rule.micro_usd.map(|m| m as f64 / 1e6),
        limit_tokens: rule.tokens,
        used_pct: by_cost.unwrap_or(0.0).max(by_tokens.unwrap_or(0.0)),
    }
}

/// Joins a month's rows with the previous month's and the monthly budgets naming each group.
pub fn build(
    month: Vec<SummaryRow>,
    previous: &[SummaryRow],
    budgets: &[BudgetRule],
    by: GroupBy,
) -> Vec<ChargebackRow> {
    let mut rows: Vec<SummaryRow> = month;
    // Groups that spent last month and nothing now.
    for p in previous {
        if !rows.iter().any(|r| r.key == p.key) {
            rows.push(SummaryRow::empty(p.key.clone()));
        }
    }
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    rows.into_iter()
        .map(|r| {
            let previous_cost_usd = previous
                .iter()
                .find(|p| p.key == r.key)
                .map_or(0.0, |p| p.cost_usd);
            let change_pct = (previous_cost_usd > 0.0)
                .then(|| (r.cost_usd - previous_cost_usd) / previous_cost_usd * 100.0);
            let budget = budgets
                .iter()
                .filter(|b| b.window == Window::Month)
                .find(|b| sole_owner(&b.scope, by) == Some(r.key.as_str()))
                .map(|b| budget_use(&r, b));
            ChargebackRow {
                month: r,
                previous_cost_usd,
                change_pct,
                budget,
            }
        })
        .collect()
}

const HEADERS: [&str; 10] = [
    "requests",
    "input",
    "output",
    "cost_usd",
    "prev_cost_usd",
    "change_pct",
    "budget",
    "budget_usd",
    "budget_tokens",
    "budget_used_pct",
];

fn cells(r: &ChargebackRow) -> Vec<String> {
    let m = &r.month;
    let b = r.budget.as_ref();
    vec![
        m.key.clone(),
        m.requests.to_string(),
        m.input_tokens.to_string(),
        m.output_tokens.to_string(),
        format!("{:.6}", m.cost_usd),
        format!("{:.6}", r.previous_cost_usd),
        r.change_pct.map(|c| format!("{c:.1}")).unwrap_or_default(),
        b.map(|b| b.name.clone()).unwrap_or_default(),
        b.and_then(|b| b.limit_usd)
            .map(|l| format!("{l:.2}"))
            .unwrap_or_default(),
        b.and_then(|b| b.limit_tokens)
            .map(|l| l.to_string())
            .unwrap_or_default(),
        b.map(|b| format!("{:.1}", b.used_pct)).unwrap_or_default(),
    ]
}

/// Renders rows as a table, CSV or JSON; `key_name` titles the first column.
pub fn render(rows: &[ChargebackRow], format: Format, key_name: &str) -> String {
    let headers: Vec<&str> = std::iter::once(key_name).chain(HEADERS).collect();
    let all: Vec<Vec<String>> = rows.iter().map(cells).collect();
    super::table::render(format, rows, &headers, &all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::policy::OnBreach;

    fn row(key: &str, cost_usd: f64, tokens: u64) -> SummaryRow {
        SummaryRow {
            key: key.into(),
            requests: 1,
            errors: 0,
            input_tokens: tokens,
            cached_tokens: 0,
            output_tokens: 0,
            reasoning_tokens: 0,
            estimated: 0,
            cost_usd,
            nodes: None,
        }
    }

    fn budget(
        name: &str,
        scope: Scope,
        usd: Option<u64>,
        tokens: Option<u64>,
        window: Window,
    ) -> BudgetRule {
        BudgetRule {
            name: name.into(),
            scope,
            tokens,
            micro_usd: usd.map(|u| u * 1_000_000),
            window,
            alert_at: Vec::new(),
            on_breach: OnBreach::Block,
            shared: false,
        }
    }

    fn team(t: &str) -> Scope {
        Scope {
            team: Some(t.into()),
            ..Scope::default()
        }
    }

    #[test]
    fn change_and_budget_use_per_team() {
        let month = vec![row("ads", 30.0, 1000), row("search", 12.0, 9000)];
        let previous = vec![row("search", 8.0, 1), row("legacy", 5.0, 1)];
        let budgets = vec![
            // Names the team and a model: not the team's own budget.
            budget(
                "narrow",
                Scope {
                    model: Some(crate::config::kernel::Glob::new("gpt*")),
                    ..team("search")
                },
                Some(1),
                None,
                Window::Month,
            ),
            budget("daily", team("search"), Some(1), None, Window::Day),
            budget(
                "search-month",
                team("search"),
                Some(40),
                Some(10_000),
                Window::Month,
            ),
            budget("ads-month", team("ads"), None, Some(4000), Window::Month),
        ];
        let rows = build(month, &previous, &budgets, GroupBy::Team);
        let keys: Vec<&str> = rows.iter().map(|r| r.month.key.as_str()).collect();
        assert_eq!(keys, ["ads", "legacy", "search"]);
        let get = |k: &str| rows.iter().find(|r| r.month.key == k).unwrap();
        assert_eq!(get("ads").change_pct, None, "nothing last month");
        assert_eq!(get("legacy").change_pct, Some(-100.0));
        assert_eq!(get("search").change_pct, Some(50.0));
        let b = get("search").budget.as_ref().unwrap();
        // 12 of 40 USD is 30 %, 9000 of 10000 tokens is 90 %: the larger.
        assert_eq!((b.name.as_str(), b.used_pct), ("search-month", 90.0));
        assert_eq!(get("ads").budget.as_ref().unwrap().used_pct, 25.0);
        assert!(get("legacy").budget.is_none());

        let csv = render(&rows, Format::Csv, "team");
        assert!(
            csv.starts_with("team,requests,input,output,cost_usd,prev_cost_usd,change_pct,budget"),
            "{csv}"
        );
        assert!(
            csv.contains("search,1,9000,0,12.000000,8.000000,50.0,search-month,40.00,10000,90.0"),
            "{csv}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&rows, Format::Json, "team")).unwrap();
        assert_eq!(json[2]["key"], "search");
        assert_eq!(json[2]["budget"]["used_pct"], 90.0);
        assert!(render(&rows, Format::Table, "team").contains("search-month"));
    }
}
