//! The shapes other programs see: service names, gateway routes, message bodies.
//! Services share these types instead of importing each other.

pub mod blog;
pub mod email;
pub mod media;
pub mod schema;

/// Every service of the system, in start order (the gateway last).
pub const SERVICES: [&str; 10] = [
    "auth",
    "media",
    "converter",
    "notification",
    "posts",
    "comments",
    "moderation",
    "query",
    "event-bus",
    "gateway",
];

/// The environment variable that tells the gateway where `service` runs,
/// e.g. `event-bus` → `FLOTILLA_EVENT_BUS_URL`.
pub fn upstream_url_var(service: &str) -> String {
    format!("FLOTILLA_{}_URL", service.to_uppercase().replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_variables_follow_the_contract() {
        assert_eq!(upstream_url_var("auth"), "FLOTILLA_AUTH_URL");
        assert_eq!(upstream_url_var("event-bus"), "FLOTILLA_EVENT_BUS_URL");
    }
}
