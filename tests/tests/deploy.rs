//! The deployment manifests render with kustomize, pass schema validation, name every
//! service with probes, and carry no secret values.

use std::process::Command;

fn required_tool(name: &str) -> bool {
    let found = Command::new(name)
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{name} is missing, but CI=true: .ci/run must install it");
    }
    if !found {
        eprintln!("skipped: {name} is not installed");
    }
    found
}

fn kustomize(dir: &str) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = Command::new("kubectl")
        .args(["kustomize", &format!("{root}/{dir}")])
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 manifests")
}

#[test]
fn every_service_is_deployed_with_probes_and_no_secrets() {
    if !required_tool("kubectl") {
        return;
    }
    let rendered = kustomize("deploy/k8s/overlays/production");
    for service in contracts::SERVICES {
        assert!(
            rendered.contains(&format!("args:\n        - serve\n        - {service}\n")),
            "no Deployment serves {service}"
        );
    }
    assert_eq!(
        rendered.matches("path: /readyz").count(),
        10,
        "every service has a readiness probe"
    );
    assert_eq!(rendered.matches("path: /healthz").count(), 10);
    // Secrets are referenced, never written out.
    assert!(
        !rendered.contains("kind: Secret"),
        "a Secret is in the manifests"
    );
    for line in rendered.lines() {
        let lower = line.to_lowercase();
        assert!(
            !(lower.contains("password") && lower.contains("value:")),
            "a password value in the manifests: {line}"
        );
        assert!(
            !lower.contains("amqp://") || lower.contains("secretkeyref"),
            "{line}"
        );
    }
}

#[test]
fn manifests_pass_schema_validation() {
    if !required_tool("kubectl") || !required_tool("kubernetes-validate") {
        return;
    }
    for dir in ["deploy/k8s/base", "deploy/k8s/overlays/production"] {
        let rendered = kustomize(dir);
        let file = tempfile::NamedTempFile::new().expect("temporary file");
        std::fs::write(file.path(), rendered).expect("written");
        let output = Command::new("kubernetes-validate")
            .args(["-k", "1.30.0", "--strict", "--quiet"])
            .arg(file.path())
            .output()
            .expect("kubernetes-validate runs");
        assert!(
            output.status.success(),
            "{dir}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
