//! In KMS mode the app's TLS certificates come from the KMS that released
//! its keys, as upstream's guest agent gets them: one `SignCert` per
//! `/GetTlsKey` (or tappd `DeriveKey`), trusting only the root it pinned.

use dstack_guest_api::{CertSigner, SignerError};
use dstack_kms_client::{KmsClient, KmsRoot};
use dstack_proto::kms::SignCertRequest;
use dstack_ra_tls::CertSigningRequestV2;

/// The signing request version upstream's guest sends.
const CSR_VERSION: u32 = 2;

/// The KMS at one URL, as a [`CertSigner`].
#[derive(Debug)]
pub(super) struct KmsCertSigner {
    pub(super) client: KmsClient,
    pub(super) root: KmsRoot,
    pub(super) vm_config: String,
    /// The guest API calls signers on blocking threads; the request runs here.
    pub(super) runtime: tokio::runtime::Handle,
}

impl CertSigner for KmsCertSigner {
    fn sign(
        &self,
        csr: &CertSigningRequestV2,
        signature: &[u8],
    ) -> Result<Vec<String>, SignerError> {
        let request = SignCertRequest {
            api_version: CSR_VERSION,
            csr: csr.to_bytes(),
            signature: signature.to_vec(),
            vm_config: self.vm_config.clone(),
        };
        let answer = self
            .runtime
            .block_on(self.client.sign_cert(&self.root, &request))?;
        Ok(answer.certificate_chain)
    }
}
