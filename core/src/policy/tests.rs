use std::collections::BTreeMap;

use super::*;
use crate::names::{Labels, Login, Username};
use crate::ttl::Ttl;

const DESIGN_SAMPLE: &str = r#"
[defaults]
user_cert_ttl = "12h"
max_user_cert_ttl = "24h"
renew_until = "7d"
host_cert_ttl = "30d"
recording = "strict"          # or "best-effort"

[roles.dev]
logins = ["{user}", "deploy"] # {user} = the Postern user name
nodes = { env = ["dev", "staging"] }
permit = ["pty", "port-forwarding"]
max_ttl = "12h"

[roles.ops]
logins = ["root", "{user}"]
nodes = { "*" = "*" }
permit = ["pty", "port-forwarding", "agent-forwarding"]

[users.alice]
roles = ["dev"]

[users.bob]
roles = ["dev", "ops"]

[users."carol.smith@corp"]
roles = ["dev"]

[users.nobody]
roles = []
"#;

fn user(s: &str) -> Username {
    s.parse().unwrap()
}

fn policy() -> Policy {
    Policy::parse(DESIGN_SAMPLE, "policy.toml").unwrap()
}

#[test]
fn accepts_the_design_sample_and_the_init_sample() {
    let p = policy();
    assert_eq!(p.defaults.renew_until.as_secs(), 7 * 86_400);
    assert_eq!(p.roles.len(), 2);
    Policy::parse(SAMPLE_POLICY, "sample").unwrap();
}

#[test]
fn rejects_unknown_key_with_file_line_and_column() {
    let text = "[defaults]\nuser_cert_ttl = \"1h\"\n\n[roles.dev]\nlogins = [\"x\"]\nbogus = 1\n";
    let e = Policy::parse(text, "/etc/postern/policy.toml").unwrap_err();
    assert_eq!((e.line, e.column), (6, 1), "{e}");
    assert!(
        e.to_string().starts_with("/etc/postern/policy.toml:6:1: "),
        "{e}"
    );
    assert!(e.message.contains("bogus"), "{e}");
}

#[test]
fn rejects_bad_values_at_their_position() {
    let e = Policy::parse("[defaults]\nuser_cert_ttl = \"12x\"\n", "p").unwrap_err();
    assert_eq!((e.line, e.column), (2, 17), "{e}");
    let e = Policy::parse("[roles.a]\nlogins = [\"ro ot\"]\n", "p").unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    let e = Policy::parse("[roles.a]\npermit = [\"fly\"]\n", "p").unwrap_err();
    assert!(e.message.contains("unknown permit"), "{e}");
    let e = Policy::parse("[users.a]\nroles = [\"missing\"]\n", "p").unwrap_err();
    assert!(e.message.contains("unknown role"), "{e}");
    let e = Policy::parse("[users.\"a b\"]\nroles = []\n", "p").unwrap_err();
    assert_eq!(e.line, 1, "{e}");
    let e = Policy::parse("[roles.a]\nlogins = [\"{usr}\"]\n", "p").unwrap_err();
    assert!(e.message.contains("template"), "{e}");
    let e = Policy::parse("[defaults]\nrecording = \"sometimes\"\n", "p").unwrap_err();
    assert!(e.message.contains("recording"), "{e}");
    let e = Policy::parse("[defaults]\nuser_cert_ttl = \"48h\"\n", "p").unwrap_err();
    assert!(e.message.contains("max_user_cert_ttl"), "{e}");
    assert!(Policy::parse("not toml at all [", "p").is_err());
}

#[test]
fn accepts_login_for_user_with_roles() {
    let d = policy().decide_login(&user("alice"), None).unwrap();
    let logins: Vec<_> = d.approval.logins().iter().map(|l| l.as_str()).collect();
    assert_eq!(logins, ["alice", "deploy"]);
    assert_eq!(
        d.approval.permits().iter().copied().collect::<Vec<_>>(),
        [Permit::Pty, Permit::PortForwarding]
    );
    assert_eq!(d.approval.ttl().as_secs(), 12 * 3600);
    assert_eq!(d.capped_from, None);
}

#[test]
fn unions_logins_and_permits_of_several_roles() {
    let d = policy().decide_login(&user("bob"), None).unwrap();
    let logins: Vec<_> = d.approval.logins().iter().map(|l| l.as_str()).collect();
    assert_eq!(logins, ["bob", "deploy", "root"]);
    assert!(d.approval.permits().contains(&Permit::AgentForwarding));
}

#[test]
fn caps_ttl_at_the_smallest_limit_and_says_so() {
    let p = policy();
    let d = p
        .decide_login(&user("alice"), Some("48h".parse().unwrap()))
        .unwrap();
    assert_eq!(d.approval.ttl().as_secs(), 12 * 3600);
    assert_eq!(d.capped_from, Some("48h".parse().unwrap()));
    let d = p
        .decide_login(&user("alice"), Some("1h".parse().unwrap()))
        .unwrap();
    assert_eq!(d.approval.ttl().as_secs(), 3600);
    assert_eq!(d.capped_from, None);
}

#[test]
fn rejects_user_without_roles() {
    let p = policy();
    assert!(matches!(
        p.decide_login(&user("nobody"), None),
        Err(Deny::NoRoles { .. })
    ));
    assert!(matches!(
        p.decide_login(&user("stranger"), None),
        Err(Deny::NoRoles { .. })
    ));
}

#[test]
fn rejects_name_that_expands_to_unsafe_principal() {
    let e = policy()
        .decide_login(&user("carol.smith@corp"), None)
        .unwrap_err();
    assert!(matches!(e, Deny::UnsafePrincipal { .. }), "{e}");
    assert!(e.to_string().contains("not a safe login"), "{e}");
}

#[test]
fn node_selector_matches_labels() {
    let p = policy();
    let dev = &p.roles["dev"].nodes;
    let ops = &p.roles["ops"].nodes;
    let l = |s: &str| s.parse::<Labels>().unwrap();
    assert!(dev.matches(&l("env=dev")));
    assert!(dev.matches(&l("env=staging,team=x")));
    assert!(!dev.matches(&l("env=prod")));
    assert!(!dev.matches(&l("team=x")));
    assert!(ops.matches(&l("")));
    assert!(ops.matches(&l("env=prod")));
    assert!(!NodeSelector {
        rules: BTreeMap::new()
    }
    .matches(&l("env=dev")));
}

#[test]
fn slices_policy_by_node_labels() {
    let p = policy();
    let l = |s: &str| s.parse::<Labels>().unwrap();
    let dev = p.slice_for_node(&l("env=dev"));
    assert_eq!(
        dev[&user("alice")]
            .iter()
            .map(|x| x.as_str())
            .collect::<Vec<_>>(),
        ["alice", "deploy"]
    );
    let prod = p.slice_for_node(&l("env=prod"));
    assert!(!prod.contains_key(&user("alice")));
    assert_eq!(
        prod[&user("bob")]
            .iter()
            .map(|x| x.as_str())
            .collect::<Vec<_>>(),
        ["bob", "root"]
    );
    // The unsafe expansion for carol is left out, not passed on.
    assert!(
        !dev.contains_key(&user("carol.smith@corp"))
            || dev[&user("carol.smith@corp")]
                .iter()
                .all(|x| x.as_str() == "deploy")
    );
}

#[test]
fn node_access_grants_one_login_with_the_permits_of_matching_roles_only() {
    let p = policy();
    let l = |s: &str| s.parse::<Labels>().unwrap();
    let login = |s: &str| s.parse::<Login>().unwrap();
    let ttl: Ttl = "5m".parse().unwrap();
    // bob is dev and ops; on env=dev as deploy only dev grants the login.
    let d = p
        .decide_node_access(&user("bob"), &login("deploy"), &l("env=dev"), ttl)
        .unwrap();
    assert_eq!(d.approval.login(), &login("deploy"));
    assert_eq!(
        d.approval.permits().iter().copied().collect::<Vec<_>>(),
        [Permit::Pty, Permit::PortForwarding]
    );
    assert_eq!(d.approval.ttl(), ttl);
    assert_eq!(d.capped_from, None);
    // As root anywhere, ops grants it, with agent forwarding.
    let d = p
        .decide_node_access(&user("bob"), &login("root"), &l("env=prod"), ttl)
        .unwrap();
    assert!(d.approval.permits().contains(&Permit::AgentForwarding));
    // {user} expands.
    let d = p
        .decide_node_access(&user("alice"), &login("alice"), &l("env=staging"), ttl)
        .unwrap();
    assert_eq!(d.approval.user().as_str(), "alice");
}

#[test]
fn node_access_caps_ttl_at_the_matching_roles_limit() {
    let p = policy();
    let d = p
        .decide_node_access(
            &user("alice"),
            &"deploy".parse().unwrap(),
            &"env=dev".parse().unwrap(),
            "48h".parse().unwrap(),
        )
        .unwrap();
    assert_eq!(d.approval.ttl().as_secs(), 12 * 3600);
    assert_eq!(d.capped_from, Some("48h".parse().unwrap()));
}

#[test]
fn rejects_node_access_outside_the_labels_or_logins_of_the_roles() {
    let p = policy();
    let l = |s: &str| s.parse::<Labels>().unwrap();
    let ttl: Ttl = "5m".parse().unwrap();
    let e = p
        .decide_node_access(
            &user("alice"),
            &"deploy".parse().unwrap(),
            &l("env=prod"),
            ttl,
        )
        .unwrap_err();
    assert!(matches!(e, Deny::LoginNotOnNode { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("policy does not allow alice to log in as deploy"),
        "{e}"
    );
    // root is an ops login; alice is not ops, even on a server ops would select.
    assert!(matches!(
        p.decide_node_access(&user("alice"), &"root".parse().unwrap(), &l("env=dev"), ttl),
        Err(Deny::LoginNotOnNode { .. })
    ));
    // A role that grants the login on other labels does not count (bob: deploy is dev-only).
    assert!(matches!(
        p.decide_node_access(
            &user("bob"),
            &"deploy".parse().unwrap(),
            &l("env=prod"),
            ttl
        ),
        Err(Deny::LoginNotOnNode { .. })
    ));
    assert!(matches!(
        p.decide_node_access(&user("stranger"), &"root".parse().unwrap(), &l(""), ttl),
        Err(Deny::NoRoles { .. })
    ));
    // carol's {user} expansion is unsafe: it grants nothing, deploy still works.
    let carol = user("carol.smith@corp");
    assert!(p
        .decide_node_access(&carol, &"deploy".parse().unwrap(), &l("env=dev"), ttl)
        .is_ok());
}

const VIEW_SAMPLE: &str = r#"
[roles.dev]
logins = ["{user}"]
nodes = { env = "dev" }

[roles.auditor]
logins = ["{user}"]
nodes = { env = "dev" }
view_recordings = { "*" = "*" }

[roles.prod-lead]
logins = ["{user}"]
nodes = { env = "dev" }
view_recordings = { env = ["prod", "staging"], team = "*" }

[users.alice]
roles = ["dev"]
[users.carol]
roles = ["dev", "auditor"]
[users.dave]
roles = ["prod-lead", "dev"]
"#;

#[test]
fn view_recordings_selects_servers_like_nodes_does() {
    let p = Policy::parse(VIEW_SAMPLE, "p").unwrap();
    let l = |s: &str| s.parse::<Labels>().unwrap();
    assert_eq!(
        p.recording_viewer_role(&user("carol"), &l("env=prod")),
        Some("auditor")
    );
    let dave = user("dave");
    assert_eq!(
        p.recording_viewer_role(&dave, &l("env=prod,team=web")),
        Some("prod-lead")
    );
    assert_eq!(
        p.recording_viewer_role(&dave, &l("env=staging,team=db")),
        Some("prod-lead")
    );
    // Every label of the selector must match: no team label, or another env.
    assert_eq!(p.recording_viewer_role(&dave, &l("env=prod")), None);
    assert_eq!(p.recording_viewer_role(&dave, &l("env=dev,team=web")), None);
    // A removed server is judged by empty labels: only "*" = "*" selects it.
    assert_eq!(p.recording_viewer_role(&dave, &l("")), None);
    assert_eq!(
        p.recording_viewer_role(&user("carol"), &l("")),
        Some("auditor")
    );
    // Without the key, a role grants nobody else's recordings, even with `nodes = *`.
    assert_eq!(p.recording_viewer_role(&user("alice"), &l("env=dev")), None);
    assert_eq!(p.recording_viewer_role(&user("stranger"), &l("")), None);
    assert!(p.views_others_recordings(&user("carol")));
    assert!(p.views_others_recordings(&dave));
    assert!(!p.views_others_recordings(&user("alice")));
    assert!(!p.views_others_recordings(&user("stranger")));
    // An empty selector grants nothing.
    let p = Policy::parse(
        "[roles.r]\nlogins = [\"x\"]\nview_recordings = {}\n[users.u]\nroles = [\"r\"]\n",
        "p",
    )
    .unwrap();
    assert!(!p.views_others_recordings(&user("u")));
    assert_eq!(p.recording_viewer_role(&user("u"), &l("")), None);
}

#[test]
fn rejects_hostile_view_recordings_with_file_line_and_column() {
    let bad = |text: &str| Policy::parse(text, "/etc/postern/policy.toml").unwrap_err();
    // A misspelt key is unknown, at its own position.
    let e = bad("[roles.a]\nlogins = [\"x\"]\nview_recording = { \"*\" = \"*\" }\n");
    assert_eq!((e.line, e.column), (3, 1), "{e}");
    assert!(e.message.contains("view_recording"), "{e}");
    assert!(
        e.to_string().starts_with("/etc/postern/policy.toml:3:1: "),
        "{e}"
    );
    // Not a table.
    let e = bad("[roles.a]\nview_recordings = \"*\"\n");
    assert_eq!(e.line, 2, "{e}");
    let e = bad("[roles.a]\nview_recordings = [\"*\"]\n");
    assert_eq!(e.line, 2, "{e}");
    // "*" as a key takes only "*".
    let e = bad("[roles.a]\n\nview_recordings = { \"*\" = \"prod\" }\n");
    assert_eq!((e.line, e.column), (3, 27), "{e}");
    assert!(e.message.contains("only takes"), "{e}");
    let e = bad("[roles.a]\nview_recordings = { \"*\" = [\"prod\"] }\n");
    assert!(e.message.contains("only takes"), "{e}");
    // Values that are not strings, nested tables, repeated keys.
    for text in [
        "[roles.a]\nview_recordings = { env = 3 }\n",
        "[roles.a]\nview_recordings = { env = [\"prod\", 1] }\n",
        "[roles.a]\nview_recordings = { env = { a = \"b\" } }\n",
        "[roles.a]\nview_recordings = { env = \"a\", env = \"b\" }\n",
        "[roles.a]\nview_recordings = true\n",
    ] {
        let e = bad(text);
        assert_eq!(e.line, 2, "{text}: {e}");
        assert!(e.column > 1, "{text}: {e}");
    }
    // The same key twice in one role.
    let e = bad("[roles.a]\nview_recordings = {}\nview_recordings = {}\n");
    assert_eq!(e.line, 3, "{e}");
}

#[test]
fn line_col_counts_characters() {
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
    assert_eq!(line_col("é\nx", 3), (2, 1));
    assert_eq!(line_col("abc", 99), (1, 4));
}
