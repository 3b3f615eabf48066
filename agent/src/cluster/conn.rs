//! Connecting to Redis: one endpoint (`redis:`), a Redis Cluster (`redis_cluster:`, any of its
//! nodes; every key Tollgate writes carries a hash tag, so each script and pipeline touches one
//! slot), or the master that a set of Sentinels names (`sentinel:`, asked again at every
//! reconnect, so a failover is followed). Blocking connections with timeouts, used only on the
//! cluster threads and by `tollgate usage --cluster`.

use std::time::Duration;

use redis::ConnectionLike;

use crate::config::cluster::{ClusterSettings, RedisTarget};

/// A connection to whichever kind of deployment was configured.
pub type RedisConn = Box<dyn ConnectionLike + Send>;

pub fn connect(settings: &ClusterSettings, timeout: Duration) -> redis::RedisResult<RedisConn> {
    match &settings.target {
        RedisTarget::Single(url) => {
            let client = redis::Client::open(settings.with_password(url))?;
            let conn = client.get_connection_with_timeout(timeout)?;
            conn.set_read_timeout(Some(timeout))?;
            conn.set_write_timeout(Some(timeout))?;
            Ok(Box::new(conn))
        }
        RedisTarget::Cluster(nodes) => {
            let nodes: Vec<String> = nodes.iter().map(|n| settings.with_password(n)).collect();
            let client = redis::cluster::ClusterClientBuilder::new(nodes)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()?;
            Ok(Box::new(client.get_connection()?))
        }
        RedisTarget::Sentinel { master, nodes } => {
            let mut info = redis::RedisConnectionInfo::default();
            if let Some(p) = &settings.password {
                info = info.set_password(p);
            }
            let node_info = redis::sentinel::SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(info);
            let mut client = redis::sentinel::SentinelClient::build(
                nodes.clone(),
                master.as_str(),
                Some(node_info),
                redis::sentinel::SentinelServerType::Master,
            )?;
            let conn = client.get_connection()?;
            conn.set_read_timeout(Some(timeout))?;
            conn.set_write_timeout(Some(timeout))?;
            Ok(Box::new(conn))
        }
    }
}
