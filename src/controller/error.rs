use thiserror::Error;

/// Errors of one reconcile; each maps to a low-cardinality reason for logs and metrics.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API error while {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("a Job named {job} exists that this migration did not create; delete it, then retry (annotate phasegate.dev/retry)")]
    JobConflict { job: String },
    #[error("Job {job} carries this migration's owner reference but is not the Job the operator recorded creating (a status write lost after its creation, or a Job someone else made look like it): deleted it; the attempt starts again")]
    UnrecordedJob { job: String },
    #[error("invalid label selector in {target}: {reason}")]
    Selector { target: String, reason: String },
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("cannot serialise {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The reason label used in metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubeApi",
            Error::JobConflict { .. } => "JobConflict",
            Error::UnrecordedJob { .. } => "UnrecordedJob",
            Error::Selector { .. } => "InvalidSelector",
            Error::MissingField(_) => "MalformedObject",
            Error::Serialize { .. } => "Serialize",
        }
    }
}

/// Attach what was being done to a kube error.
pub trait KubeContext<T> {
    fn during(self, action: impl Into<String>) -> Result<T, Error>;
}

impl<T> KubeContext<T> for Result<T, kube::Error> {
    fn during(self, action: impl Into<String>) -> Result<T, Error> {
        self.map_err(|source| Error::Kube {
            action: action.into(),
            source,
        })
    }
}
