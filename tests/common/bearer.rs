//! Clients that send a caller token, for servers with authentication configured.
#![allow(dead_code)]

use std::net::SocketAddr;

use anchor_pdp::{PolicyAdminClient, PolicyDecisionPointClient};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds `authorization: Bearer TOKEN` to every call (nothing when `None`).
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| tonic::Status::internal("bad token"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

pub type Pdp = PolicyDecisionPointClient<InterceptedService<Channel, Bearer>>;
pub type Admin = PolicyAdminClient<InterceptedService<Channel, Bearer>>;

pub async fn clients(addr: SocketAddr, token: Option<&str>) -> (Pdp, Admin) {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let bearer = Bearer(token.map(str::to_owned));
    (
        PolicyDecisionPointClient::with_interceptor(channel.clone(), bearer.clone()),
        PolicyAdminClient::with_interceptor(channel, bearer),
    )
}
