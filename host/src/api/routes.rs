//! Every route of the API, and the access each one needs.
//!
//! Requests are parsed into a [`Route`] before anything else happens, and
//! [`Route::access`] is an exhaustive match: a new route cannot be added
//! without saying who may call it. [`ROUTES`] lists one example of each for
//! the documentation and for the test that calls every route with every
//! wrong scope.

use http::Method;

use super::ApiError;
use crate::auth::Scope;

/// A parsed request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    Health,
    /// `/fn/{name}[@v]/...` (the caller's tenant, or the default tenant
    /// for anonymous calls to public functions), or
    /// `/t/{tenant}/fn/{name}[@v]/...`. The path is the part from `/fn/`.
    Invoke {
        tenant: Option<&'a str>,
        path: &'a str,
    },
    ListFunctions,
    GetFunction(&'a str),
    DeployFunction(&'a str),
    PatchFunction(&'a str),
    DeleteFunction(&'a str),
    ListModels,
    GetModel(&'a str),
    UploadModel(&'a str),
    DeleteModel(&'a str),
    GetInvocation(&'a str),
    InvocationLogs(&'a str),
    FunctionLogs(&'a str),
    Usage,
    /// Prometheus text; the platform's own (default tenant) keys only.
    Metrics,
    ListTenants,
    CreateTenant,
    GetTenant(&'a str),
    PatchTenant(&'a str),
    DeleteTenant(&'a str),
    ListKeys(&'a str),
    CreateKey(&'a str),
    GetKey(&'a str, &'a str),
    DeleteKey(&'a str, &'a str),
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a key.
    Anyone,
    /// A key holding at least one of these scopes.
    AnyOf(&'static [Scope]),
    /// Decided per function: `invoke`, or nothing for a public function.
    Invoke,
}

const READ: Access = Access::AnyOf(&[Scope::Read, Scope::Deploy]);
const DEPLOY: Access = Access::AnyOf(&[Scope::Deploy]);
const ADMIN: Access = Access::AnyOf(&[Scope::Admin]);
const READ_LEDGER: Access = Access::AnyOf(&[Scope::Read]);

impl Route<'_> {
    pub fn access(&self) -> Access {
        match self {
            Route::Health => Access::Anyone,
            Route::Invoke { .. } => Access::Invoke,
            Route::ListFunctions
            | Route::GetFunction(_)
            | Route::ListModels
            | Route::GetModel(_) => READ,
            Route::DeployFunction(_)
            | Route::PatchFunction(_)
            | Route::DeleteFunction(_)
            | Route::UploadModel(_)
            | Route::DeleteModel(_) => DEPLOY,
            Route::GetInvocation(_)
            | Route::InvocationLogs(_)
            | Route::FunctionLogs(_)
            | Route::Usage
            | Route::Metrics => READ_LEDGER,
            Route::ListTenants
            | Route::CreateTenant
            | Route::GetTenant(_)
            | Route::PatchTenant(_)
            | Route::DeleteTenant(_)
            | Route::ListKeys(_)
            | Route::CreateKey(_)
            | Route::GetKey(..)
            | Route::DeleteKey(..) => ADMIN,
        }
    }
}

/// Parses a request's method and path.
pub fn parse<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, ApiError> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = trimmed.split('/').collect();
    let allow = |allowed: &'static str| ApiError::method_not_allowed(allowed);
    let m = method.clone();
    let route = match segments.as_slice() {
        ["healthz"] => match m {
            Method::GET | Method::HEAD => Route::Health,
            _ => return Err(allow("GET, HEAD")),
        },
        ["fn", ..] => Route::Invoke { tenant: None, path },
        ["t", tenant, "fn", ..] => {
            let at = 1 + "t/".len() + tenant.len();
            Route::Invoke {
                tenant: Some(tenant),
                path: path.get(at..).unwrap_or("/fn/"),
            }
        }
        ["v1", "functions"] | ["v1", "functions", ""] => match m {
            Method::GET => Route::ListFunctions,
            _ => return Err(allow("GET")),
        },
        ["v1", "functions", name] => match m {
            Method::GET => Route::GetFunction(name),
            Method::PUT => Route::DeployFunction(name),
            Method::PATCH => Route::PatchFunction(name),
            Method::DELETE => Route::DeleteFunction(name),
            _ => return Err(allow("GET, PUT, PATCH, DELETE")),
        },
        ["v1", "models"] | ["v1", "models", ""] => match m {
            Method::GET => Route::ListModels,
            _ => return Err(allow("GET")),
        },
        ["v1", "models", name] => match m {
            Method::GET => Route::GetModel(name),
            Method::PUT => Route::UploadModel(name),
            Method::DELETE => Route::DeleteModel(name),
            _ => return Err(allow("GET, PUT, DELETE")),
        },
        ["v1", "invocations", id] => match m {
            Method::GET => Route::GetInvocation(id),
            _ => return Err(allow("GET")),
        },
        ["v1", "invocations", id, "logs"] => match m {
            Method::GET => Route::InvocationLogs(id),
            _ => return Err(allow("GET")),
        },
        ["v1", "functions", name, "logs"] => match m {
            Method::GET => Route::FunctionLogs(name),
            _ => return Err(allow("GET")),
        },
        ["metrics"] => match m {
            Method::GET => Route::Metrics,
            _ => return Err(allow("GET")),
        },
        ["v1", "usage"] => match m {
            Method::GET => Route::Usage,
            _ => return Err(allow("GET")),
        },
        ["v1", "tenants"] | ["v1", "tenants", ""] => match m {
            Method::GET => Route::ListTenants,
            Method::POST => Route::CreateTenant,
            _ => return Err(allow("GET, POST")),
        },
        ["v1", "tenants", tenant] => match m {
            Method::GET => Route::GetTenant(tenant),
            Method::PATCH => Route::PatchTenant(tenant),
            Method::DELETE => Route::DeleteTenant(tenant),
            _ => return Err(allow("GET, PATCH, DELETE")),
        },
        ["v1", "tenants", tenant, "keys"] | ["v1", "tenants", tenant, "keys", ""] => match m {
            Method::GET => Route::ListKeys(tenant),
            Method::POST => Route::CreateKey(tenant),
            _ => return Err(allow("GET, POST")),
        },
        ["v1", "tenants", tenant, "keys", key] => match m {
            Method::GET => Route::GetKey(tenant, key),
            Method::DELETE => Route::DeleteKey(tenant, key),
            _ => return Err(allow("GET, DELETE")),
        },
        _ => {
            return Err(ApiError::not_found(format!(
                "no route for {}",
                path.chars().take(200).collect::<String>()
            )));
        }
    };
    Ok(route)
}

/// One example request per route: method, path, and the scopes that open
/// it (empty: anyone; for `/fn/`, a function that is not public).
pub const ROUTES: &[(&str, &str, &[&str])] = &[
    ("GET", "/healthz", &[]),
    ("GET", "/fn/{name}/", &["invoke"]),
    ("POST", "/t/{tenant}/fn/{name}/", &["invoke"]),
    ("GET", "/v1/functions", &["read", "deploy"]),
    ("GET", "/v1/functions/{name}", &["read", "deploy"]),
    ("PUT", "/v1/functions/{name}", &["deploy"]),
    ("PATCH", "/v1/functions/{name}", &["deploy"]),
    ("DELETE", "/v1/functions/{name}", &["deploy"]),
    ("GET", "/v1/models", &["read", "deploy"]),
    ("GET", "/v1/models/{model}", &["read", "deploy"]),
    ("PUT", "/v1/models/{model}", &["deploy"]),
    ("DELETE", "/v1/models/{model}", &["deploy"]),
    ("GET", "/v1/invocations/{id}", &["read"]),
    ("GET", "/v1/invocations/{id}/logs", &["read"]),
    ("GET", "/v1/functions/{name}/logs", &["read"]),
    ("GET", "/metrics", &["read"]),
    ("GET", "/v1/usage", &["read"]),
    ("GET", "/v1/tenants", &["admin"]),
    ("POST", "/v1/tenants", &["admin"]),
    ("GET", "/v1/tenants/{tenant}", &["admin"]),
    ("PATCH", "/v1/tenants/{tenant}", &["admin"]),
    ("DELETE", "/v1/tenants/{tenant}", &["admin"]),
    ("GET", "/v1/tenants/{tenant}/keys", &["admin"]),
    ("POST", "/v1/tenants/{tenant}/keys", &["admin"]),
    ("GET", "/v1/tenants/{tenant}/keys/{key}", &["admin"]),
    ("DELETE", "/v1/tenants/{tenant}/keys/{key}", &["admin"]),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_table_matches_the_router() {
        for (method, path, scopes) in ROUTES {
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            let route = parse(&method, path).expect("every listed route parses");
            let expected = match route.access() {
                Access::Anyone => vec![],
                Access::Invoke => vec!["invoke"],
                Access::AnyOf(s) => s.iter().map(|s| s.name()).collect(),
            };
            assert_eq!(&expected, scopes, "{method} {path}");
        }
    }

    #[test]
    fn tenant_paths_split_off_the_function_path() {
        let r = parse(&Method::GET, "/t/acme/fn/hello@2/a?b").expect("route");
        assert_eq!(
            r,
            Route::Invoke {
                tenant: Some("acme"),
                path: "/fn/hello@2/a?b"
            }
        );
        assert!(parse(&Method::POST, "/v1/usage").is_err());
        assert!(parse(&Method::GET, "/v2/nothing").is_err());
    }
}
