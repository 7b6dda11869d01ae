//! What each upstream serves, as its handlers describe it (`gateway::Descriptions`),
//! below both the system API and `openapi.rs`, which read it.

use utoipa::openapi::OpenApi;

/// Each upstream's description of its routes, from its handlers, by upstream name
/// (`auth`, `media`, …). Whoever builds the gateway hands them in (`flotilla` takes them
/// from each service crate), so that the gateway depends on no service.
#[derive(Clone, Default)]
pub struct Descriptions(std::collections::BTreeMap<&'static str, OpenApi>);

impl std::fmt::Debug for Descriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Descriptions {
    /// `upstream` serves the routes `description` describes.
    pub fn with(mut self, upstream: &'static str, description: OpenApi) -> Self {
        self.0.insert(upstream, description);
        self
    }

    pub(crate) fn of(&self, upstream: &str) -> OpenApi {
        self.0.get(upstream).cloned().unwrap_or_default()
    }
}
