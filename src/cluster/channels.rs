//! The gRPC channels a node keeps to the other nodes it reads from: one
//! an address, at most a bound of them, the least recently used dropped
//! past it (and made again, lazily, when next needed). With `tls.cert`
//! they are TLS channels ([`client_tls`]).

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::ClusterError;
use crate::Config;

/// How a node reaches the others under TLS (`tls.cert` set): trusting
/// `cluster.tls_ca` only, presenting its own `tls.cert` and `tls.key`
/// as client certificate. `None` without TLS.
pub fn client_tls(config: &Config) -> Result<Option<ClientTlsConfig>, ClusterError> {
    let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
        return Ok(None);
    };
    let read = |field: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| ClusterError::Config {
            field,
            reason: format!("{}: {e}", path.display()),
        })
    };
    let ca = config
        .cluster
        .tls_ca
        .as_deref()
        .ok_or(ClusterError::Config {
            field: "cluster.tls_ca",
            reason: "required with tls.cert on several partitions".into(),
        })?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("cluster.tls_ca", ca)?))
        .identity(Identity::from_pem(
            read("tls.cert", cert)?,
            read("tls.key", key)?,
        ));
    Ok(Some(tls))
}

/// How long a node's channel waits to connect before a call on it fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The channels, by address, with when each was last used (a counter).
pub struct NodeChannels {
    channels: BTreeMap<String, (Channel, u64)>,
    max: usize,
    uses: u64,
    /// Under TLS: how every channel is made.
    tls: Option<ClientTlsConfig>,
}

impl NodeChannels {
    /// An empty cache of at most `max` channels (at least one), each a
    /// TLS channel under `tls`.
    pub fn new(max: usize, tls: Option<ClientTlsConfig>) -> NodeChannels {
        NodeChannels {
            channels: BTreeMap::new(),
            max: max.max(1),
            uses: 0,
            tls,
        }
    }

    /// The channel to `address`, made (lazily: it connects on first use)
    /// when there is none; `None` when `address` is not a URL. Must run
    /// inside a Tokio runtime.
    pub fn get(&mut self, address: &str) -> Option<Channel> {
        self.uses += 1;
        if let Some((channel, used)) = self.channels.get_mut(address) {
            *used = self.uses;
            return Some(channel.clone());
        }
        let mut endpoint = Channel::from_shared(address.to_owned())
            .map_err(|error| tracing::warn!(address, %error, "a node's address is not a URL"))
            .ok()?
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|error| tracing::warn!(address, %error, "no TLS channel to a node"))
                .ok()?;
        }
        let channel = endpoint.connect_lazy();
        if self.channels.len() >= self.max {
            let oldest = self
                .channels
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(a, _)| a.clone());
            if let Some(oldest) = oldest {
                self.channels.remove(&oldest);
            }
        }
        self.channels
            .insert(address.to_owned(), (channel.clone(), self.uses));
        Some(channel)
    }

    /// The addresses kept, in order.
    pub fn addresses(&self) -> Vec<&str> {
        self.channels.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_bound_the_least_recently_used_channel_goes() {
        let mut channels = NodeChannels::new(3, None);
        let address = |i: u32| format!("http://127.0.0.1:{}", 7000 + i);
        for i in 0..3 {
            assert!(channels.get(&address(i)).is_some());
        }
        // 0 used again: 1 is now the least recently used.
        channels.get(&address(0)).unwrap();
        channels.get(&address(3)).unwrap();
        assert_eq!(channels.addresses(), [address(0), address(2), address(3)]);
        for i in 4..20 {
            channels.get(&address(i)).unwrap();
            assert_eq!(channels.addresses().len(), 3);
        }
        assert!(channels.get("not a url").is_none());
        assert_eq!(channels.addresses().len(), 3);
    }
}
