//! The API as the partner listener's handler: requests with the peer the handshake
//! established, and the listener's own refusals (limits, a withdrawn certificate), which are
//! audited here like every other request (SPEC §8).

use bytes::Bytes;
use http::Request;

use super::outcome::HttpRefusal;
use super::{Api, Caller};
use crate::listener::{Handler, HandlerFuture, Peer, Refusal};

fn caller(peer: &Peer) -> Caller {
    Caller {
        agreement: peer
            .partner
            .as_ref()
            .map(|p| std::sync::Arc::new(p.agreement.clone())),
        certificate_sha256: hex::encode(peer.leaf_cert_sha256),
    }
}

impl Handler for Api {
    fn handle(&self, peer: Peer, request: Request<Bytes>) -> HandlerFuture<'_> {
        Box::pin(async move { Api::handle(self, &caller(&peer), request).await })
    }

    fn refuse(
        &self,
        peer: Peer,
        request: Option<Request<()>>,
        refusal: Refusal,
    ) -> HandlerFuture<'_> {
        let refusal = match refusal {
            Refusal::CertificateWithdrawn => HttpRefusal::CertificateWithdrawn,
            Refusal::Timeout => HttpRefusal::Timeout,
            Refusal::BodyTooLarge => HttpRefusal::BodyTooLarge,
            Refusal::HeadersTooLarge => HttpRefusal::HeadersTooLarge,
            Refusal::TooManyRequests => HttpRefusal::TooManyRequests,
            Refusal::MalformedBody => HttpRefusal::MalformedBody,
        };
        Box::pin(async move {
            self.refuse_http(&caller(&peer), request.as_ref(), refusal)
                .await
        })
    }
}
