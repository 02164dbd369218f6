//! Reaching a plugin: once per engine (started, or dialled at its address), health-checked,
//! configured, and again when it was found dead.

use super::*;

impl PluginRunner {
    /// The live connection, starting (or restarting) the plugin when needed.
    pub(super) async fn connect(&self) -> Result<Arc<Conn>, RunnerError> {
        let mut slot = self.conn.lock().await;
        if self.hung.swap(false, std::sync::atomic::Ordering::SeqCst) {
            // Only that call may have been slow (an image pulled in Start): a plugin whose health
            // service still answers is kept, with its runs.
            let healthy = match slot.as_ref() {
                Some(c) if c.alive() => {
                    let mut health = c.health.clone();
                    let req = tonic_health::pb::HealthCheckRequest { service: "plugin".into() };
                    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
                    matches!(
                        tokio::time::timeout(Duration::from_secs(2), health.check(req)).await,
                        Ok(Ok(r)) if r.get_ref().status == serving
                    )
                }
                _ => true,
            };
            if !healthy {
                if let Some(c) = slot.take() {
                    tracing::warn!(
                        "plugin {}: a call timed out and it does not answer; starting it afresh",
                        self.name()
                    );
                    if let Some(p) = &c.process {
                        p.kill_because(format!(
                            "a call did not answer within {:?}, nor its health service",
                            self.settings.timeout
                        ));
                        p.settle().await;
                    }
                }
            }
        }
        if let Some(c) = slot.as_ref() {
            if c.alive() {
                if self.unconfigured.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    // A standalone plugin restarted behind the same address: configure it again.
                    let mut client = c.client.clone();
                    self.configure(&mut client).await?;
                }
                return Ok(c.clone());
            }
            let p = c.process.as_ref().expect("only processes die");
            let status = p.settle().await;
            tracing::warn!(
                "plugin {} died ({}); starting it again{}",
                self.name(),
                describe_status(status),
                tail_text(&p.tail())
            );
        }
        *slot = None;
        let conn = Arc::new(self.open().await?);
        *self.info.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.info.clone());
        *slot = Some(conn.clone());
        drop(slot);
        // Whatever runs of an earlier process of this plugin left behind.
        let mut client = conn.client.clone();
        match self.call_optional(client.reap(pb::ReapRequest {})).await {
            Ok(r) if r.removed > 0 => {
                tracing::warn!("plugin {}: reaped {} leftovers of earlier runs", self.name(), r.removed)
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("plugin {}: reap: {e}", self.name()),
        }
        Ok(conn)
    }

    pub(super) async fn open(&self) -> Result<Conn, RunnerError> {
        let (channel, process) = match &self.settings.endpoint {
            Endpoint::Command(argv) => {
                let (channel, process) = self.launch(argv).await?;
                (channel, Some(process))
            }
            Endpoint::Address { url, tls } => (self.dial(url, tls.as_ref()).await?, None),
        };
        let with_tail = |e: RunnerError| match (&e, &process) {
            (RunnerError::Runner { runner, message }, Some(p)) => {
                RunnerError::Runner { runner: runner.clone(), message: format!("{message}{}", tail_text(&p.tail())) }
            }
            _ => e,
        };
        // go-plugin hosts check the health service first; so do we.
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let req = tonic_health::pb::HealthCheckRequest { service: "plugin".into() };
        let status = self.call(health.check(req)).await.map_err(with_tail)?;
        if status.status != tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            return Err(with_tail(self.failed("its health service says it is not serving")));
        }
        let digest = tonic::metadata::AsciiMetadataValue::try_from(self.config_digest.as_str())
            .map_err(|e| self.failed(e.to_string()))?;
        let mut client =
            RunnerClient::with_interceptor(channel, NameConfig(digest)).max_decoding_message_size(64 << 20);
        let info = self
            .call(client.info(pb::InfoRequest { protocol_version: crate::PROTOCOL_VERSION }))
            .await
            .map_err(with_tail)?;
        if info.protocol_version != crate::PROTOCOL_VERSION {
            return Err(self.failed(format!(
                "it speaks runner protocol version {}; this engine speaks version {}",
                info.protocol_version,
                crate::PROTOCOL_VERSION
            )));
        }
        let mut info = convert::info_from_pb(&info).map_err(|e| self.failed(e.to_string()))?;
        let missing: Vec<&str> =
            self.settings.serves.iter().filter(|s| !info.serves.contains(s)).map(|s| s.as_str()).collect();
        if !missing.is_empty() {
            return Err(RunnerError::Unavailable {
                runner: self.name().to_string(),
                detail: format!(
                    "configured to serve {} but the plugin serves only {}",
                    missing.join(", "),
                    info.serves.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
            });
        }
        info.name = self.name().to_string();
        info.serves = self.settings.serves.clone();
        self.configure(&mut client).await.map_err(with_tail)?;
        // What it can do may depend on its configuration: ask again.
        let configured = self
            .call(client.info(pb::InfoRequest { protocol_version: crate::PROTOCOL_VERSION }))
            .await
            .map_err(with_tail)?;
        info.version = configured.version.clone();
        info.capabilities = configured.capabilities.as_ref().map(convert::capabilities_from_pb).unwrap_or_default();
        Ok(Conn { client, health, process, info })
    }

    /// Configure with our configuration; its errors name the fields (`plugins.NAME.config.FIELD`).
    pub(super) async fn configure(&self, client: &mut Client) -> Result<(), RunnerError> {
        let config_json = serde_json::to_string(&self.settings.config).unwrap_or_else(|_| "null".into());
        let configured = self.call(client.configure(pb::ConfigureRequest { config_json })).await?;
        if configured.errors.is_empty() {
            return Ok(());
        }
        let errors: Vec<String> = configured
            .errors
            .iter()
            .map(|e| {
                let field = if e.field.is_empty() { String::new() } else { format!(".{}", e.field) };
                format!("plugins.{}.config{field}: {}", self.name(), e.message)
            })
            .collect();
        Err(RunnerError::Unavailable { runner: self.name().to_string(), detail: errors.join("; ") })
    }

    pub(super) async fn dial(&self, url: &str, tls: Option<&ClientTls>) -> Result<Channel, RunnerError> {
        if let Some(path) = url.strip_prefix("unix://") {
            return self.connect_unix(PathBuf::from(path)).await;
        }
        self.connect_uri(url, tls).await
    }

    pub(super) async fn connect_unix(&self, path: PathBuf) -> Result<Channel, RunnerError> {
        let endpoint = TonicEndpoint::from_static("http://plugin.invalid").connect_timeout(self.settings.timeout);
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        });
        tokio::time::timeout(self.settings.timeout, endpoint.connect_with_connector(connector))
            .await
            .map_err(|_| self.failed(format!("no connection within {:?}", self.settings.timeout)))?
            .map_err(|e| self.failed(format!("cannot connect: {}", error_chain(&e))))
    }

    pub(super) async fn connect_uri(&self, url: &str, tls: Option<&ClientTls>) -> Result<Channel, RunnerError> {
        let mut endpoint = TonicEndpoint::from_shared(url.to_string())
            .map_err(|e| self.failed(format!("address `{url}`: {e}")))?
            .connect_timeout(self.settings.timeout)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            let read = |p: &Path| fs_err::read(p).map_err(|e| self.failed(format!("TLS file {}: {e}", p.display())));
            let mut config = tonic::transport::ClientTlsConfig::new();
            // Without a CA of its own, the server's certificate is checked against the host's.
            if tls.and_then(|t| t.ca.as_ref()).is_none() {
                config = config.with_native_roots();
            }
            if let Some(t) = tls {
                if let Some(ca) = &t.ca {
                    config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
                }
                if let (Some(cert), Some(key)) = (&t.cert, &t.key) {
                    config = config.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
                }
                if let Some(d) = &t.domain {
                    config = config.domain_name(d.clone());
                }
            }
            endpoint = endpoint.tls_config(config).map_err(|e| self.failed(format!("TLS: {e}")))?;
        }
        tokio::time::timeout(self.settings.timeout, endpoint.connect())
            .await
            .map_err(|_| self.failed(format!("no connection to {url} within {:?}", self.settings.timeout)))?
            .map_err(|e| self.failed(format!("cannot connect to {url}: {}", error_chain(&e))))
    }
}
