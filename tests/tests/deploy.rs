//! The deployment files: every Kubernetes overlay renders with kustomize, passes schema
//! validation, and obeys the policy below for every workload; compose names every
//! service and matches the compose schema; the CI workflows match GitHub's schema.
//! The tools (kubectl, kubernetes-validate, python3 with PyYAML, podman-compose,
//! check-jsonschema) are installed by scripts/ci/start-servers.sh; outside CI a missing
//! one skips its test, under CI=true it fails it.

use std::{collections::BTreeSet, process::Command};

use serde_json::Value;

const OVERLAYS: [&str; 3] = ["production", "production-hpa", "local"];
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn required_tool(name: &str, probe: &[&str]) -> bool {
    let found = Command::new(name)
        .args(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{name} is missing, but CI=true: scripts/ci/start-servers.sh must install it");
    }
    if !found {
        eprintln!("skipped: {name} is not installed");
    }
    found
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(ROOT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("stdin written");
    drop(input);
    let output = child.wait_with_output().expect("finished");
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn kustomize(dir: &str) -> String {
    run("kubectl", &["kustomize", dir], None)
}

/// Every document of a YAML stream, as JSON (PyYAML: kubernetes-validate depends on it).
fn yaml_documents(yaml: &str) -> Vec<Value> {
    let json = run(
        "python3",
        &[
            "-c",
            "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ],
        Some(yaml),
    );
    serde_json::from_str(&json).expect("JSON from PyYAML")
}

fn rendered(overlay: &str) -> Vec<Value> {
    yaml_documents(&kustomize(&format!("deploy/k8s/overlays/{overlay}")))
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn of_kind<'a>(objects: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objects.iter().filter(move |o| o["kind"] == kind)
}

fn tools_for_manifests() -> bool {
    required_tool("kubectl", &["version", "--client"])
        && required_tool("python3", &["-c", "import yaml"])
}

#[test]
fn every_overlay_renders_and_passes_strict_schema_validation() {
    if !tools_for_manifests() || !required_tool("kubernetes-validate", &["--version"]) {
        return;
    }
    for dir in ["deploy/k8s/base", "deploy/k8s/infra"]
        .into_iter()
        .map(str::to_owned)
        .chain(OVERLAYS.map(|o| format!("deploy/k8s/overlays/{o}")))
    {
        let file = tempfile::NamedTempFile::new().expect("temporary file");
        std::fs::write(file.path(), kustomize(&dir)).expect("written");
        let path = file.path().to_str().expect("UTF-8 path");
        // KEDA's kinds have no built-in schema: warned about, not failed on.
        run(
            "kubernetes-validate",
            &["-k", "1.30.0", "--strict", "--quiet", "--no-warn", path],
            None,
        );
    }
}

#[test]
fn every_workload_follows_the_policy() {
    if !tools_for_manifests() {
        return;
    }
    for overlay in OVERLAYS {
        let objects = rendered(overlay);
        let at = |what: &str| format!("{overlay}: {what}");
        assert!(
            of_kind(&objects, "Secret").next().is_none(),
            "{}",
            at("a Secret")
        );

        // Every service is deployed, with `serve SERVICE`.
        for service in contracts::SERVICES {
            let deployment = of_kind(&objects, "Deployment")
                .find(|d| name(d) == service)
                .unwrap_or_else(|| panic!("{}", at(&format!("no Deployment {service}"))));
            let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
            assert_eq!(
                args,
                &serde_json::json!(["serve", service]),
                "{}",
                at(service)
            );
        }

        let accounts: BTreeSet<&str> = of_kind(&objects, "ServiceAccount").map(name).collect();
        let workloads = objects.iter().filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("Deployment" | "StatefulSet" | "Job")
            )
        });
        let mut count = 0;
        for workload in workloads {
            count += 1;
            let what = format!("{} {}", workload["kind"], name(workload));
            let pod = &workload["spec"]["template"]["spec"];
            assert_eq!(pod["automountServiceAccountToken"], false, "{}", at(&what));
            let account = pod["serviceAccountName"].as_str().unwrap_or_default();
            assert!(
                accounts.contains(account),
                "{}",
                at(&format!("{what}: account {account}"))
            );
            let pod_non_root = pod["securityContext"]["runAsNonRoot"] == true;
            for container in pod["containers"].as_array().expect("containers") {
                let what = format!("{what} container {}", container["name"]);
                let resources = &container["resources"];
                for (kind, resource) in [
                    ("requests", "cpu"),
                    ("requests", "memory"),
                    ("limits", "cpu"),
                    ("limits", "memory"),
                ] {
                    assert!(
                        resources[kind][resource].is_string(),
                        "{}",
                        at(&format!("{what}: no {kind}.{resource}"))
                    );
                }
                let security = &container["securityContext"];
                assert!(
                    pod_non_root || security["runAsNonRoot"] == true,
                    "{}",
                    at(&format!("{what}: may run as root"))
                );
                assert_eq!(security["readOnlyRootFilesystem"], true, "{}", at(&what));
                assert_eq!(security["allowPrivilegeEscalation"], false, "{}", at(&what));
                if workload["kind"] != "Job" {
                    assert!(container["readinessProbe"].is_object(), "{}", at(&what));
                    assert!(container["livenessProbe"].is_object(), "{}", at(&what));
                }
                // No literal secret: sensitive variables come from Secrets.
                for env in container["env"].as_array().into_iter().flatten() {
                    let var = env["name"].as_str().unwrap_or_default();
                    let literal = env["value"].as_str().unwrap_or_default();
                    // (`…_FILE` names a path, e.g. a mounted Secret's.)
                    let sensitive = ["PASSWORD", "SECRET", "TOKEN", "KEY"]
                        .iter()
                        .any(|word| var.contains(word))
                        && !var.ends_with("_FILE");
                    assert!(
                        !(sensitive && env.get("value").is_some()),
                        "{}",
                        at(&format!("{what}: {var} has a literal value"))
                    );
                    assert!(
                        !(literal.contains("://") && literal.contains('@')),
                        "{}",
                        at(&format!("{what}: {var} carries credentials"))
                    );
                }
                // Infrastructure images are pinned to a release, not a moving tag.
                let image = container["image"].as_str().unwrap_or_default();
                if !image.contains("flotilla") {
                    let tag = image.rsplit_once(':').map_or("", |(_, tag)| tag);
                    assert!(
                        tag.matches('.').count() >= 1 && tag != "latest",
                        "{}",
                        at(&format!("{what}: image {image} is not pinned"))
                    );
                }
            }
        }
        assert!(count >= 13, "{}", at("workloads missing"));

        // What an autoscaler owns has no `replicas:` (an apply would reset the count).
        let autoscaled: Vec<&str> = of_kind(&objects, "HorizontalPodAutoscaler")
            .chain(of_kind(&objects, "ScaledObject"))
            .filter_map(|scaler| scaler["spec"]["scaleTargetRef"]["name"].as_str())
            .collect();
        if overlay != "local" {
            assert!(
                autoscaled.contains(&"converter"),
                "{}",
                at("converter not autoscaled")
            );
        }
        for target in &autoscaled {
            let deployment = of_kind(&objects, "Deployment")
                .find(|d| name(d) == *target)
                .expect("the autoscaled Deployment");
            assert!(
                deployment["spec"].get("replicas").is_none(),
                "{}",
                at(&format!("{target} is autoscaled and sets replicas"))
            );
        }
        // Every multi-replica service keeps a pod through voluntary disruptions.
        let budgets: BTreeSet<&str> = of_kind(&objects, "PodDisruptionBudget")
            .filter_map(|pdb| {
                pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"].as_str()
            })
            .collect();
        for deployment in of_kind(&objects, "Deployment") {
            let replicas = deployment["spec"]["replicas"].as_u64();
            let multi = replicas.map_or(autoscaled.contains(&name(deployment)), |n| n > 1);
            if multi && overlay != "local" {
                assert!(
                    budgets.contains(name(deployment)),
                    "{}",
                    at(&format!("no PDB for {}", name(deployment)))
                );
            }
        }

        // Default deny, and the gateway is the only thing reachable from anywhere.
        let policies: Vec<&Value> = of_kind(&objects, "NetworkPolicy").collect();
        assert!(
            policies
                .iter()
                .any(|p| p["spec"]["podSelector"] == serde_json::json!({})
                    && p["spec"].get("ingress").is_none()),
            "{}",
            at("no default-deny NetworkPolicy")
        );
        for policy in &policies {
            for rule in policy["spec"]["ingress"].as_array().into_iter().flatten() {
                let from_anywhere = rule.get("from").is_none();
                let target =
                    &policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"];
                assert!(
                    !from_anywhere || target == "gateway",
                    "{}",
                    at(&format!("{} admits anyone", name(policy)))
                );
            }
        }
        for guarded in ["postgres", "rabbitmq", "auth", "media"] {
            assert!(
                policies.iter().any(
                    |p| p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                        == guarded
                ),
                "{}",
                at(&format!("no NetworkPolicy for {guarded}"))
            );
        }

        // The ingress: 2 GiB uploads, and the operational endpoints kept inside.
        let ingress = of_kind(&objects, "Ingress").next().expect("an Ingress");
        assert_eq!(
            ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"],
            "2g"
        );
        let paths = ingress["spec"]["rules"][0]["http"]["paths"]
            .as_array()
            .expect("paths");
        for hidden in ["/metrics", "/readyz"] {
            let path = paths
                .iter()
                .find(|p| p["path"] == hidden)
                .unwrap_or_else(|| panic!("{}", at(&format!("{hidden} not covered"))));
            assert_eq!(path["pathType"], "Exact");
            assert_ne!(
                path["backend"]["service"]["name"],
                "flotilla",
                "{}",
                at(hidden)
            );
        }
        assert!(of_kind(&objects, "Job").any(|job| name(job) == "flotilla-db-init"));
    }
}

#[test]
fn compose_names_every_service_and_matches_the_compose_schema() {
    if !required_tool("podman-compose", &["--version"])
        || !required_tool("check-jsonschema", &["--version"])
        || !required_tool("python3", &["-c", "import yaml"])
    {
        return;
    }
    let config = run(
        "podman-compose",
        &[
            "--env-file",
            "deploy/.env.example",
            "-f",
            "deploy/compose.yaml",
            "config",
        ],
        None,
    );
    let compose = yaml_documents(&config).remove(0);
    for service in contracts::SERVICES {
        let command = &compose["services"][service]["command"];
        assert_eq!(command, &serde_json::json!(["serve", service]), "{service}");
        assert_eq!(
            compose["services"][service]["user"], "65532:65532",
            "{service}"
        );
        assert_eq!(compose["services"][service]["read_only"], true, "{service}");
    }
    for server in ["postgres", "rabbitmq", "mailpit"] {
        assert!(compose["services"][server].is_object(), "{server}");
    }
    assert_eq!(
        compose["services"]["gateway"]["ports"],
        serde_json::json!(["8080:8080"])
    );
    run(
        "check-jsonschema",
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            "deploy/compose.yaml",
        ],
        None,
    );
    // The secrets file is git-ignored; only the example is committed.
    let ignored = Command::new("git")
        .args(["check-ignore", "-q", "deploy/.env"])
        .current_dir(ROOT)
        .status()
        .expect("git runs");
    assert!(ignored.success(), "deploy/.env is not git-ignored");
}

#[test]
fn the_github_workflows_match_the_workflow_schema_and_run_the_ci_script() {
    if !required_tool("check-jsonschema", &["--version"]) {
        return;
    }
    let dir = format!("{ROOT}/.github/workflows");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect(".github/workflows")
        .map(|entry| entry.expect("entry").path().display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let mut args = vec!["--builtin-schema", "vendor.github-workflows"];
    args.extend(files.iter().map(String::as_str));
    run("check-jsonschema", &args, None);
    let all: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("readable"))
        .collect();
    assert!(all.contains("bash .ci/run"), "CI does not run .ci/run");
    assert!(all.contains("ghcr.io/"), "no image pushed to GHCR");
    assert!(
        all.contains("environment: production"),
        "the deploy is not gated"
    );
    assert!(all.contains("kubectl apply -k"), "no deploy job");
    assert!(
        !all.contains("'${{ secrets."),
        "a secret spliced into a script"
    );
}
