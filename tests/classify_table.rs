//! Table-driven classify + authorize cases: one line per case.
//!
//! `request | grant | interaction | expectation [| extra …]`
//! - request: `METHOD target` (`^` is the base itself: `GET ^?_type=…`), or
//!   `ENTRY METHOD url` for a batch/transaction entry (`classify_entry`).
//! - grant: scopes, plus `@A` (launch patient A), `~Practitioner/9` (fhirUser),
//!   `!export` (allow `$export`), `!deny-nonmember`; `-` for none.
//! - interaction: kebab-case name, `-` when classification must fail.
//! - expectation: `E:Variant` (classify error), `P` (forward, pass-through), `F<letter>`
//!   (forward, filtered by that letter), `W<letter>` (forward, a write checked by that letter), `X<status>:<reason>`; then optional `->target`,
//!   `+pre`, `+body`, `narrowed`, `scope=raw`, `code=reason`, `detail~text`, `ine=value`.
//! - extras: `ct:…` (Content-Type), `body:…`, `ine:…` (If-None-Exist), `h:Name=Value`.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use smartgate::authenticate::{Grant, TokenKind};
use smartgate::authorize::{
    Decision, NonMemberAccess, OperationRule, Outcome, ResponseRule, Rules, authorize,
};
use smartgate::classify::{
    ClassifyError, FhirRequest, Interaction, OperationLevel, RawRequest, classify, classify_entry,
};
use smartgate::fhir::ResourceType;
use smartgate::scope::{Context, Letter, ScopeSet};

const CASES: &[&str] = &[
    // ---- path tricks ----
    "GET Patient%2F1 | system/*.* | - | E:EncodedSeparator",
    "GET Patient/1%2F2 | system/*.* | - | E:EncodedSeparator",
    "GET Patient/1%2f2 | system/*.* | - | E:EncodedSeparator",
    "GET Patient%5C1 | system/*.* | - | E:EncodedSeparator",
    "GET Patient/1%5c | system/*.* | - | E:EncodedSeparator",
    "GET Patient\\1 | system/*.* | - | E:EncodedSeparator",
    "GET Patient/%2e%2e/Observation | system/*.* | - | E:DotSegment",
    "GET Patient/../Observation | system/*.* | - | E:DotSegment",
    "GET Patient/./1 | system/*.* | - | E:DotSegment",
    "GET %2E | system/*.* | - | E:DotSegment",
    "GET Patient/%2E%2E | system/*.* | - | E:DotSegment",
    "GET Patient/.%2e | system/*.* | - | E:DotSegment",
    "GET Patient/.. | system/*.* | - | E:DotSegment",
    "GET Patient/1;x=y | system/*.* | - | E:MatrixParameter",
    "GET Patient;/1 | system/*.* | - | E:MatrixParameter",
    "GET Patient/1%3B | system/*.* | - | E:MatrixParameter",
    "GET Patient/1%3bjsessionid=x | system/*.* | - | E:MatrixParameter",
    "GET Patient/1%00 | system/*.* | - | E:ControlCharacter",
    "GET Patient/1%0A | system/*.* | - | E:ControlCharacter",
    "GET Patient/1%09 | system/*.* | - | E:ControlCharacter",
    "GET Patient/1%7F | system/*.* | - | E:ControlCharacter",
    "GET Patient/1\u{0} | system/*.* | - | E:ControlCharacter",
    "GET Patient%252F1 | system/*.* | - | E:DoubleEncoding",
    "GET Patient/%2531 | system/*.* | - | E:DoubleEncoding",
    "GET Patient/%252e%252e | system/*.* | - | E:DoubleEncoding",
    "GET Patient//1 | system/*.* | - | E:EmptySegment",
    "GET Patient/ | system/*.* | - | E:EmptySegment",
    "GET /Patient | system/*.* | - | E:EmptySegment",
    "GET //evil/Patient | system/*.* | - | E:EmptySegment",
    "GET Patient/1/ | system/*.* | - | E:EmptySegment",
    "GET Patient/%ff | system/*.* | - | E:NotUtf8",
    "GET Patient/%c3%28 | system/*.* | - | E:NotUtf8",
    "GET Patient/%zz | system/*.* | - | E:BadEscape",
    "GET Patient/%2 | system/*.* | - | E:BadEscape",
    "GET Patient/1% | system/*.* | - | E:BadEscape",
    "GET http://evil/Patient/1 | system/*.* | - | E:AbsoluteForm",
    "GET https:Patient | system/*.* | - | E:AbsoluteForm",
    "GET urn:x:Patient | system/*.* | - | E:AbsoluteForm",
    "GET patient/1 | system/*.* | - | E:UnknownResourceType",
    "GET PATIENT/1 | system/*.* | - | E:UnknownResourceType",
    "GET Foo | system/*.* | - | E:UnknownResourceType",
    "GET observation?code=x | system/*.* | - | E:UnknownResourceType",
    "GET Patient/1/observation | system/*.* | - | E:UnknownResourceType",
    "GET Patient/1/Foo | system/*.* | - | E:UnknownResourceType",
    "GET Patient/a_b | system/*.* | - | E:InvalidId",
    "GET Patient/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa | system/*.* | - | E:InvalidId",
    "GET Patient/1/_history/x_y | system/*.* | - | E:InvalidId",
    "GET Patient/a%20b | system/*.* | - | E:InvalidId",
    "GET Patient/a b | system/*.* | - | E:InvalidCharacter",
    "GET Patient/a\"b | system/*.* | - | E:InvalidCharacter",
    "GET Patient/a<b | system/*.* | - | E:InvalidCharacter",
    "GET Patient/é | system/*.* | - | E:InvalidCharacter",
    "GET Patient/1/foo/bar | system/*.* | - | E:UnknownPath",
    "GET Patient/1/_history/2/x | system/*.* | - | E:UnknownPath",
    "GET Observation/1/Observation | system/*.* | - | E:UnknownPath",
    "GET Patient/1/$ | system/*.* | - | E:UnknownPath",
    "GET $1x | system/*.* | - | E:UnknownPath",
    "GET $every.thing | system/*.* | - | E:UnknownPath",
    "GET Pati%65nt/1 | system/*.* | read | P ->Patient/1",
    "GET Patient/%31 | system/*.* | read | P ->Patient/1",
    "GET Patient/1-a.b | system/*.* | read | P ->Patient/1-a.b",
    "GET %50atient | system/*.* | search-type | Fs ->Patient",
    // ---- methods ----
    "POST Patient/1 | system/*.* | - | E:MethodNotAllowed",
    "DELETE metadata | system/*.* | - | E:MethodNotAllowed",
    "POST metadata | system/*.* | - | E:MethodNotAllowed",
    "PUT Patient/1/_history/2 | system/*.* | - | E:MethodNotAllowed",
    "OPTIONS Patient | system/*.* | - | E:MethodNotAllowed",
    "TRACE Patient | system/*.* | - | E:MethodNotAllowed",
    "CONNECT Patient | system/*.* | - | E:MethodNotAllowed",
    "POST Patient/1/_history | system/*.* | - | E:MethodNotAllowed",
    "GET Patient/_search | system/*.* | - | E:MethodNotAllowed",
    "GET _search | system/*.* | - | E:MethodNotAllowed",
    "DELETE Patient/1/$everything | system/*.* | - | E:MethodNotAllowed",
    "PUT Patient/1/Observation | system/*.* | - | E:MethodNotAllowed",
    "DELETE _history | system/*.* | - | E:MethodNotAllowed",
    "PUT ^ | system/*.* | - | E:MethodNotAllowed",
    "DELETE ^ | system/*.* | - | E:MethodNotAllowed",
    "PUT Patient | system/*.* | - | E:MissingCriteria",
    "DELETE Patient | system/*.* | - | E:MissingCriteria",
    "PATCH Patient | system/*.* | - | E:MissingCriteria",
    "DELETE Patient?_format=json | system/*.* | - | E:MissingCriteria",
    // ---- method override ----
    "GET Patient/1 | system/*.* | - | E:MethodOverride | h:X-HTTP-Method-Override=DELETE",
    "GET Patient/1 | system/*.* | - | E:MethodOverride | h:X-HTTP-Method=DELETE",
    "GET Patient/1 | system/*.* | - | E:MethodOverride | h:X-Method-Override=PUT",
    "POST Patient/_search | system/*.* | - | E:MethodOverride | h:x-http-method-override=GET",
    "GET Patient?_method=DELETE | system/*.* | - | E:MethodOverride",
    "GET Patient?_m%65thod=DELETE | system/*.* | - | E:MethodOverride",
    "POST Patient/_search | system/*.* | - | E:MethodOverride | ct:application/x-www-form-urlencoded | body:_method=DELETE",
    "ENTRY GET Patient?_method=PUT | system/*.* | - | E:MethodOverride",
    // ---- query strings ----
    "GET Patient?name=a+b | system/*.* | search-type | Fs ->Patient?name=a%2Bb",
    "GET Patient?name=a%20b | system/*.* | search-type | Fs ->Patient?name=a%20b",
    "GET Patient?name=a%2Bb | system/*.* | search-type | Fs ->Patient?name=a%2Bb",
    "GET Observation?code=%zz | system/*.* | - | E:BadEscape",
    "GET Observation?code=%ff | system/*.* | - | E:NotUtf8",
    "GET Observation?c%zzode=1 | system/*.* | - | E:BadEscape",
    "GET Observation?code | system/*.* | - | E:BadParameter",
    "GET Observation?=x | system/*.* | - | E:BadParameter",
    "GET Observation?a=1&&b=2 | system/*.* | - | E:BadParameter",
    "GET Observation?a=1& | system/*.* | - | E:BadParameter",
    "GET Observation?code=a%00 | system/*.* | - | E:ControlCharacter",
    "GET Observation?co%20de=1 | system/*.* | - | E:BadParameter",
    "GET Observation?code:=1 | system/*.* | - | E:BadParameter",
    "GET Observation?code.=1 | system/*.* | - | E:BadParameter",
    "GET Observation?code=a b | system/*.* | - | E:InvalidCharacter",
    "GET Observation?code=a#b | system/*.* | - | E:InvalidCharacter",
    "GET Observation? | system/*.* | search-type | Fs ->Observation",
    "GET Observation?_format=json | system/*.* | search-type | Fs ->Observation?_format=json",
    "GET Observation?code=a%26b | system/*.* | search-type | Fs ->Observation?code=a%26b",
    "GET Observation?code=x%3Dy | system/*.* | search-type | Fs ->Observation?code=x%3Dy",
    "GET Observation?a=1;b=2 | system/*.* | search-type | Fs ->Observation?a=1%3Bb%3D2",
    "GET Observation?code=http://loinc.org|1234-5 | system/*.* | search-type | Fs ->Observation?code=http://loinc.org|1234-5",
    "GET Observation?code%3Atext=x | system/*.* | search-type | Fs ->Observation?code:text=x",
    "GET Observation?value-quantity=5.4|http://unitsofmeasure.org|mg | system/*.* | search-type | Fs",
    "GET Observation?date=ge2020-01-01T00:00:00+01:00 | system/*.* | search-type | Fs ->Observation?date=ge2020-01-01T00:00:00%2B01:00",
    "GET Observation?code=a\\,b | system/*.* | search-type | Fs ->Observation?code=a%5C,b",
    // ---- POST _search ----
    "POST Observation/_search | system/*.* | search-type | Fs ->Observation?code=x | ct:application/x-www-form-urlencoded | body:code=x",
    "POST Observation/_search?patient=A | system/*.* | search-type | Fs ->Observation?patient=A&code=1%202 | ct:application/x-www-form-urlencoded | body:code=1+2",
    "POST Observation/_search | system/*.* | search-type | Fs ->Observation?code=1%2B2 | ct:application/x-www-form-urlencoded | body:code=1%2B2",
    "POST Observation/_search | system/*.* | - | E:UnsupportedMediaType | ct:application/json | body:{}",
    "POST Observation/_search | system/*.* | - | E:UnsupportedMediaType | body:code=x",
    "POST Observation/_search | system/*.* | - | E:UnsupportedMediaType | ct:multipart/form-data | body:code=x",
    "POST Observation/_search | system/*.* | search-type | Fs ->Observation",
    "POST Observation/_search | system/*.* | search-type | Fs ->Observation?code=x | ct:application/x-www-form-urlencoded; charset=UTF-8 | body:code=x",
    "POST Observation/_search | system/*.* | search-type | Fs ->Observation?code=x | ct:Application/X-WWW-Form-Urlencoded | body:code=x",
    "POST Observation/_search | system/*.* | - | E:BadEscape | ct:application/x-www-form-urlencoded | body:code=%zz",
    "POST Observation/_search | system/*.* | - | E:BadParameter | ct:application/x-www-form-urlencoded | body:code",
    "POST _search | system/*.* | search-system | Fs ->?_type=Observation | ct:application/x-www-form-urlencoded | body:_type=Observation",
    "POST Observation/_search | patient/Observation.rs @A | search-type | X403:compartment | ct:application/x-www-form-urlencoded | body:patient=B",
    "POST Observation/_search?patient=A | patient/Observation.rs @A | search-type | X403:compartment | ct:application/x-www-form-urlencoded | body:patient=B",
    "POST Observation/_search | patient/Observation.rs @A | search-type | Fs ->Observation?patient=A | ct:application/x-www-form-urlencoded | body:patient=A",
    "POST Observation/_search | patient/Observation.rs @A | search-type | X403:forbidden-parameter | ct:application/x-www-form-urlencoded | body:_has:Condition:patient:code=x",
    // ---- batch / transaction ----
    "POST ^ | system/*.* | batch | X400:bundle-not-split | ct:application/fhir+json | body:{\"resourceType\":\"Bundle\",\"type\":\"batch\",\"entry\":[]}",
    "POST ^ | system/*.* | transaction | X400:bundle-not-split | ct:application/fhir+json | body:{\"resourceType\":\"Bundle\",\"type\":\"transaction\"}",
    "POST ^ | patient/*.* @A | transaction | X400:bundle-not-split | body:{\"type\":\"transaction\",\"resourceType\":\"Bundle\"}",
    "POST ^ | system/*.* | - | E:NotABundle | ct:application/fhir+json | body:{\"resourceType\":\"Bundle\",\"type\":\"collection\"}",
    "POST ^ | system/*.* | - | E:NotABundle | ct:application/fhir+json | body:not json",
    "POST ^ | system/*.* | - | E:NotABundle | ct:application/json | body:{\"resourceType\":\"Patient\"}",
    "POST ^ | system/*.* | - | E:NotABundle | ct:application/json | body:{\"resourceType\":\"Bundle\",\"type\":\"batch\",\"type\":\"transaction\"}",
    "POST ^ | system/*.* | - | E:UnsupportedMediaType | ct:application/fhir+xml | body:<Bundle/>",
    "POST ^ | system/*.* | - | E:NotABundle",
    // ---- batch/transaction entries ----
    "ENTRY GET Patient/1 | system/*.* | read | P ->Patient/1",
    "ENTRY HEAD Patient/1 | system/*.* | read | P",
    "ENTRY GET Observation?code=x | system/*.* | search-type | Fs ->Observation?code=x",
    "ENTRY POST Observation | system/*.* | create | P ->Observation",
    "ENTRY POST Observation | system/*.* | conditional-create | P ->Observation ine=identifier=x | ine:identifier=x",
    "ENTRY PUT Observation?identifier=x | system/*.* | conditional-update | P",
    "ENTRY PATCH Observation/1 | system/*.* | patch | P",
    "ENTRY DELETE Observation?identifier=x | system/*.* | conditional-delete | P",
    "ENTRY DELETE Observation/1 | system/*.* | delete | P",
    "ENTRY POST ^ | system/*.* | - | E:NotABundle",
    "ENTRY GET http://x/fhir/Patient/1 | system/*.* | - | E:AbsoluteForm",
    "ENTRY GET /Patient/1 | system/*.* | - | E:EmptySegment",
    "ENTRY GET Patient/1#frag | system/*.* | - | E:InvalidCharacter",
    "ENTRY GET Patient/%2e%2e | system/*.* | - | E:DotSegment",
    "ENTRY GET Patient%2F1 | system/*.* | - | E:EncodedSeparator",
    "ENTRY GET patient/1 | system/*.* | - | E:UnknownResourceType",
    "ENTRY OPTIONS Patient | system/*.* | - | E:MethodNotAllowed",
    "ENTRY POST Patient/_search | system/*.* | search-type | Fs ->Patient",
    "ENTRY GET Observation?patient=B | patient/Observation.rs @A | search-type | X403:compartment",
    "ENTRY GET Observation | patient/Observation.rs @A | search-type | Fs ->Observation?patient=Patient/A narrowed",
    "ENTRY PUT Patient/B | patient/Patient.u @A | update | X403:compartment",
    "ENTRY POST Observation | patient/Observation.c @A | conditional-create | Wc +body ine=identifier=x&patient=Patient/A | ine:identifier=x",
    "ENTRY POST Observation | patient/Observation.c @A | conditional-create | X403:compartment | ine:patient=B",
    "ENTRY GET Patient/B/$everything | patient/Patient.rs @A | operation | X403:compartment",
    // ---- scope forms: read Observation/1 ----
    "GET Observation/1 | user/Observation.read ~Practitioner/9 | read | P scope=user/Observation.read",
    "GET Observation/1 | user/Observation.rs ~Practitioner/9 | read | P",
    "GET Observation/1 | user/Observation.r ~Practitioner/9 | read | P",
    "GET Observation/1 | user/Observation.s ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | user/Observation.cruds ~Practitioner/9 | read | P",
    "GET Observation/1 | user/Observation.* ~Practitioner/9 | read | P",
    "GET Observation/1 | user/*.read ~Practitioner/9 | read | P scope=user/*.read",
    "GET Observation/1 | user/*.rs ~Practitioner/9 | read | P",
    "GET Observation/1 | user/*.cruds ~Practitioner/9 | read | P",
    "GET Observation/1 | user/Patient.rs ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | user/Observation.sr ~Practitioner/9 | read | X403:no-scope detail~user/Observation.sr",
    "GET Observation/1 | user/Observation.rr ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | user/Observation.x ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | user/Observation.RS ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | user/observation.rs ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | User/Observation.rs ~Practitioner/9 | read | X403:no-scope detail~User/Observation.rs",
    "GET Observation/1 | USER/Observation.read ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | user/Observation.Read ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | user/Observation.read?category=x ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | user/Observation.rs? ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | user/Observation.rs?category ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | user/Observation ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | user/Observation. ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | user/Observation.write ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | user/Observation.cud ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | user/Observation.rs user/Foo.rs ~Practitioner/9 | read | P detail~user/Foo.rs",
    "GET Observation/1 | system/Observation.rs | read | P scope=system/Observation.rs",
    "GET Observation/1 | system/Observation.read | read | P",
    "GET Observation/1 | system/*.* | read | P",
    "GET Observation/1 | system/Observation.rs ~Practitioner/9 | read | X403:no-scope detail~system/",
    "GET Observation/1 | system/Observation.rs @A | read | X403:no-scope",
    "GET Observation/1 | patient/Observation.rs | read | X403:no-patient-context",
    "GET Observation/1 | patient/Observation.rs ~Patient/A | read | X403:no-patient-context",
    "GET Observation/1 | patient/*.read | read | X403:no-patient-context",
    "GET Observation/1 | patient/Observation.rs @A | read | Fr",
    "GET Observation/1 | patient/Observation.read @A | read | Fr",
    "GET Observation/1 | patient/*.read @A | read | Fr",
    "GET Observation/1 | patient/*.* @A | read | Fr",
    "GET Observation/1 | patient/Observation.r @A | read | Fr scope=patient/Observation.r",
    "GET Observation/1 | patient/Observation.s @A | read | X403:no-scope",
    "GET Observation/1 | patient/Condition.rs @A | read | X403:no-scope",
    "GET Observation/1 | openid fhirUser launch/patient ~Practitioner/9 | read | X403:no-scope",
    "GET Observation/1 | openid fhirUser @A | read | X403:no-scope",
    "GET Observation/1 | launch offline_access online_access profile | read | X403:no-scope",
    "GET Observation/1 | - | read | X403:no-scope",
    "GET Observation/1 | user/Observation.rs?category=laboratory ~Practitioner/9 | read | Fr",
    "GET Observation/1 | user/Observation.rs?category=laboratory user/Observation.r ~Practitioner/9 | read | P",
    "GET Observation/1 | patient/Observation.rs?category=laboratory @A | read | Fr",
    "GET Observation/1?_elements=code | patient/Observation.rs @A | read | Fr ->Observation/1 narrowed",
    "GET Observation/1?_format=json | user/Observation.r ~Practitioner/9 | read | P ->Observation/1?_format=json",
    "HEAD Observation/1 | user/Observation.r ~Practitioner/9 | read | P",
    "HEAD Observation/1 | patient/Observation.r @A | read | Fr",
    // ---- letters per interaction (user/) ----
    "GET Observation/1/_history/2 | user/Observation.r ~Practitioner/9 | vread | P ->Observation/1/_history/2",
    "GET Observation/1/_history/2 | user/Observation.s ~Practitioner/9 | vread | X403:no-scope",
    "GET Observation/1/_history | user/Observation.r ~Practitioner/9 | history-instance | Fr ->Observation/1/_history",
    "GET Observation/1/_history | user/Observation.s ~Practitioner/9 | history-instance | X403:no-scope",
    "GET Observation/_history | user/Observation.s ~Practitioner/9 | history-type | Fs ->Observation/_history",
    "GET Observation/_history | user/Observation.r ~Practitioner/9 | history-type | X403:no-scope",
    "GET _history | user/*.s ~Practitioner/9 | history-system | Fs ->_history",
    "GET _history | user/Observation.s ~Practitioner/9 | history-system | Fs",
    "GET _history | user/Observation.r ~Practitioner/9 | history-system | X403:no-scope",
    "GET Observation | user/Observation.s ~Practitioner/9 | search-type | Fs",
    "GET Observation | user/Observation.r ~Practitioner/9 | search-type | X403:no-scope",
    "GET Observation?patient=A | user/Observation.s ~Practitioner/9 | search-type | Fs ->Observation?patient=A",
    "POST Observation | user/Observation.c ~Practitioner/9 | create | Wc ->Observation",
    "POST Observation | user/Observation.rs ~Practitioner/9 | create | X403:no-scope",
    "POST Observation | user/Observation.write ~Practitioner/9 | create | Wc",
    "POST Observation?_format=json | user/Observation.c ~Practitioner/9 | create | Wc ->Observation?_format=json",
    "POST Observation?identifier=x | user/Observation.c ~Practitioner/9 | - | E:UnexpectedParameter",
    "PUT Observation/1 | user/Observation.u ~Practitioner/9 | update | Wu",
    "PUT Observation/1 | user/Observation.c ~Practitioner/9 | update | X403:no-scope",
    "PATCH Observation/1 | user/Observation.u ~Practitioner/9 | patch | Wu",
    "PATCH Observation/1 | user/Observation.rs ~Practitioner/9 | patch | X403:no-scope",
    "DELETE Observation/1 | user/Observation.d ~Practitioner/9 | delete | Wd",
    "DELETE Observation/1 | user/Observation.cu ~Practitioner/9 | delete | X403:no-scope",
    "PUT Observation?identifier=x | user/Observation.u ~Practitioner/9 | conditional-update | X403:no-scope",
    "PUT Observation?identifier=x | user/Observation.us ~Practitioner/9 | conditional-update | Wu ->Observation?identifier=x",
    "PUT Observation?identifier=x | user/Observation.u user/Observation.s ~Practitioner/9 | conditional-update | Wu",
    "PUT Observation?identifier=x | user/Observation.u patient/Observation.s ~Practitioner/9 @A | conditional-update | X403:no-scope",
    "PATCH Observation?identifier=x | user/Observation.us ~Practitioner/9 | conditional-patch | Wu",
    "PATCH Observation?identifier=x | user/Observation.u ~Practitioner/9 | conditional-patch | X403:no-scope",
    "DELETE Observation?identifier=x | user/Observation.ds ~Practitioner/9 | conditional-delete | Wd",
    "DELETE Observation?identifier=x | user/Observation.d ~Practitioner/9 | conditional-delete | X403:no-scope",
    "POST Observation | user/Observation.c ~Practitioner/9 | conditional-create | Wc ine=identifier=x | ine:identifier=x",
    "POST Observation?_format=json | user/Observation.c ~Practitioner/9 | conditional-create | Wc ->Observation?_format=json ine=identifier=a%20b | ine:identifier=a%20b",
    "POST Observation | user/Observation.c ~Practitioner/9 | - | E:UnexpectedParameter | ine:_format=json",
    "POST Observation | user/Observation.c ~Practitioner/9 | - | E:UnexpectedParameter | ine:",
    "POST Observation | user/Observation.c ~Practitioner/9 | - | E:UnexpectedParameter | ine:identifier=%zz",
    "POST Observation | user/Observation.c ~Practitioner/9 | - | E:UnexpectedParameter | ine:?identifier=x",
    "GET metadata | - | capabilities | P ->metadata code=capabilities",
    "HEAD metadata | - | capabilities | P",
    "GET metadata?_format=json | - | capabilities | P ->metadata?_format=json",
    "GET metadata | patient/Observation.rs | capabilities | P code=capabilities",
    "HEAD Patient/1 | user/Patient.r ~Practitioner/9 | read | P",
    "GET ^ | user/*.s ~Practitioner/9 | search-system | Fs ->",
    "GET ^ | user/Observation.s ~Practitioner/9 | search-system | Fs",
    "GET ^?_type=Observation,Condition | user/Observation.s user/Condition.s ~Practitioner/9 | search-system | Fs ->?_type=Observation,Condition",
    "GET ^?_type=Observation,Condition | user/Observation.s ~Practitioner/9 | search-system | X403:no-scope",
    "GET ^?_type=Observation,Foo | user/*.s ~Practitioner/9 | search-system | X400:invalid-parameter",
    "GET ^?_type=Observation&_type=Condition | user/*.s ~Practitioner/9 | search-system | X400:invalid-parameter",
    "GET ^?_type=observation | user/*.s ~Practitioner/9 | search-system | X400:invalid-parameter",
    "GET ^?_type=Observation, | user/*.s ~Practitioner/9 | search-system | X400:invalid-parameter",
    "GET ^?_type:missing=Observation | user/*.s ~Practitioner/9 | search-system | X400:invalid-parameter",
    "GET ^?_type=Observation,Condition | user/Observation.s?category=lab user/Condition.s ~Practitioner/9 | search-system | X403:granular-scope",
    "GET Patient/1/Observation | user/Observation.s ~Practitioner/9 | search-compartment | Fs ->Patient/1/Observation",
    "GET Patient/1/Observation | user/Observation.r ~Practitioner/9 | search-compartment | X403:no-scope",
    "GET Patient/1/* | user/*.s ~Practitioner/9 | search-compartment | Fs ->Patient/1/*",
    "GET Patient/1/* | user/Observation.s ~Practitioner/9 | search-compartment | Fs",
    "GET Encounter/1/Observation | user/Observation.s ~Practitioner/9 | search-compartment | Fs ->Encounter/1/Observation",
    "GET Practitioner/1/Encounter | user/Encounter.s ~Practitioner/9 | search-compartment | Fs",
    "GET Patient/1/Observation?code=x | user/Observation.s ~Practitioner/9 | search-compartment | Fs ->Patient/1/Observation?code=x",
    // ---- operations ----
    "GET Patient/1/$everything | user/Patient.rs ~Practitioner/9 | operation | Fs ->Patient/1/$everything",
    "GET Patient/1/$everything | user/Patient.r ~Practitioner/9 | operation | X403:no-scope",
    "GET Patient/1/$everything | user/*.* ~Practitioner/9 | operation | Fs",
    "POST Patient/1/$everything | user/Patient.rs ~Practitioner/9 | operation | Fs",
    "GET Patient/$everything | user/*.* ~Practitioner/9 | operation | X403:operation-not-allowed",
    "GET Observation/1/$everything | user/*.* ~Practitioner/9 | operation | X403:operation-not-allowed",
    "GET $everything | user/*.* ~Practitioner/9 | operation | X403:operation-not-allowed",
    "GET $graphql?query=x | user/*.* ~Practitioner/9 | operation | X403:operation-not-allowed",
    "POST $graphql | user/*.* ~Practitioner/9 | operation | X403:operation-not-allowed",
    "GET Observation/$lastn | user/*.* ~Practitioner/9 | operation | X403:operation-not-allowed",
    "POST Patient/$match | user/*.* ~Practitioner/9 | operation | X403:operation-not-allowed",
    "POST ValueSet/$expand | system/*.* | operation | X403:operation-not-allowed",
    "GET $export | system/*.rs !export | operation | Fr ->$export",
    "GET $export | system/*.r !export | operation | Fr",
    "GET $export | system/Observation.rs !export | operation | X403:no-scope",
    "GET Patient/$export | system/*.rs !export | operation | Fr ->Patient/$export",
    "GET Group/1/$export | system/*.rs !export | operation | Fr ->Group/1/$export",
    "GET Group/1/$export | system/Group.rs !export | operation | X403:no-scope",
    "GET Patient/$export | system/Patient.rs !export | operation | X403:no-scope",
    "GET Group/1/$export?_type=Patient | system/Patient.rs !export | operation | Fr ->Group/1/$export?_type=Patient",
    "GET $export?_type=Observation | system/Observation.rs !export | operation | Fr ->$export?_type=Observation",
    "GET $export?_type=Observation,Condition | system/Observation.rs !export | operation | X403:no-scope",
    "GET $export?_type=Observation,Condition | system/Observation.rs system/Condition.r !export | operation | Fr",
    "GET $export?_type=Observation | system/Observation.rs?category=lab !export | operation | X403:granular-scope",
    "GET $export | user/*.rs ~Practitioner/9 !export | operation | X403:operation-not-allowed",
    "GET $export | system/*.rs ~Practitioner/9 !export | operation | X403:no-scope",
    "GET $export | system/*.rs | operation | X403:operation-not-allowed",
    "GET Observation/$export | system/*.rs !export | operation | X403:operation-not-allowed",
    "GET Patient/A/$export | patient/*.rs @A !export | operation | X403:operation-not-allowed",
    // ---- side channels under user/ ----
    "GET Patient?_has:Observation:patient:code=x | user/Patient.s ~Practitioner/9 | search-type | X403:forbidden-parameter",
    "GET Patient?_has:Observation:patient:code=x | user/Patient.s user/Observation.s ~Practitioner/9 | search-type | Fs",
    "GET Patient?_has:Foo:patient:code=x | user/*.s ~Practitioner/9 | search-type | X403:forbidden-parameter",
    "GET Observation?subject:Patient.name=x | user/Observation.s ~Practitioner/9 | search-type | X403:forbidden-parameter",
    "GET Observation?subject:Patient.name=x | user/Observation.s user/Patient.s ~Practitioner/9 | search-type | Fs",
    "GET Observation?subject.name=x | user/Observation.s user/Patient.s ~Practitioner/9 | search-type | X403:forbidden-parameter",
    "GET Observation?subject.name=x | user/*.s ~Practitioner/9 | search-type | Fs",
    "GET Observation?_include=Observation:patient | user/Observation.s ~Practitioner/9 | search-type | Fs",
    "GET Observation?_revinclude=Provenance:target | user/*.s ~Practitioner/9 | search-type | Fs",
    "GET Observation?_include=Observation:patient&_summary=true | user/Observation.s ~Practitioner/9 | search-type | Fs ->Observation?_include=Observation:patient narrowed",
    "GET Observation?_summary=count | user/Observation.s ~Practitioner/9 | search-type | Fs ->Observation",
    "GET Observation?_filter=x | user/Observation.s ~Practitioner/9 | search-type | Fs",
    // ---- granular scopes ----
    "GET Observation?code=x | user/Observation.rs?category=laboratory ~Practitioner/9 | search-type | Fs ->Observation?code=x&category=laboratory narrowed",
    "GET Observation?category=laboratory | user/Observation.rs?category=laboratory ~Practitioner/9 | search-type | Fs ->Observation?category=laboratory",
    "GET Observation | user/Observation.rs?category=laboratory user/Observation.rs?category=vital-signs ~Practitioner/9 | search-type | Fs ->Observation?category=laboratory,vital-signs",
    "GET Observation | user/Observation.rs?category=laboratory user/Observation.rs?status=final ~Practitioner/9 | search-type | Fs ->Observation?category=laboratory",
    "GET Observation?status=final | user/Observation.rs?category=laboratory user/Observation.rs?status=final ~Practitioner/9 | search-type | Fs ->Observation?status=final",
    "GET Observation | user/Observation.rs?category=laboratory&status=final ~Practitioner/9 | search-type | Fs ->Observation?category=laboratory&status=final",
    "GET Observation | user/Observation.rs?category=laboratory user/Observation.s ~Practitioner/9 | search-type | Fs",
    "GET Observation | user/Observation.rs?code:in=http://vs ~Practitioner/9 | search-type | Fs ->Observation?code:in=http://vs",
    "GET Observation | user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory ~Practitioner/9 | search-type | Fs ->Observation?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
    "GET Observation | user/Observation.rs?category=a%26b ~Practitioner/9 | search-type | Fs ->Observation?category=a%26b",
    "GET Observation/_history | user/Observation.rs?category=lab ~Practitioner/9 | history-type | X403:granular-scope",
    "GET Patient/1/Observation | user/Observation.rs?category=lab ~Practitioner/9 | search-compartment | Fs ->Patient/1/Observation?category=lab",
    "POST Observation | user/Observation.c?category=lab ~Practitioner/9 | create | Wc +body",
    "PUT Observation/1 | user/Observation.u?category=lab ~Practitioner/9 | update | Wu +pre +body",
    "PATCH Observation/1 | user/Observation.u?category=lab ~Practitioner/9 | patch | Wu +pre +body",
    "DELETE Observation/1 | user/Observation.d?category=lab ~Practitioner/9 | delete | Wd +pre",
    "PUT Observation?identifier=x | user/Observation.us?category=lab ~Practitioner/9 | conditional-update | Wu +pre +body ->Observation?identifier=x&category=lab",
    "DELETE Observation?identifier=x | user/Observation.ds?category=lab ~Practitioner/9 | conditional-delete | Wd +pre ->Observation?identifier=x&category=lab",
    "POST Observation | user/Observation.c?category=lab ~Practitioner/9 | conditional-create | Wc +body ine=identifier=x&category=lab | ine:identifier=x",
    "GET Observation | system/Observation.rs?category=lab | search-type | Fs ->Observation?category=lab",
    "GET Observation | patient/Observation.rs?category=laboratory @A | search-type | Fs ->Observation?patient=Patient/A&category=laboratory narrowed",
    "GET Observation | patient/Observation.rs?category=laboratory patient/Observation.r @A | search-type | Fs ->Observation?patient=Patient/A&category=laboratory",
    "GET Observation/1 | patient/Observation.rs?category=laboratory patient/Observation.r @A | read | Fr",
    "GET Observation?category=laboratory&patient=A | patient/Observation.rs?category=laboratory @A | search-type | Fs ->Observation?category=laboratory&patient=A",
    "GET ^?_type=Observation,Condition | patient/Observation.rs?category=lab patient/Condition.rs @A | search-system | X403:granular-scope",
    // ---- patient compartment: type searches ----
    "GET Observation | patient/Observation.rs @A | search-type | Fs ->Observation?patient=Patient/A narrowed",
    "GET Observation?patient=A | patient/Observation.rs @A | search-type | Fs ->Observation?patient=A",
    "GET Observation?patient=Patient/A | patient/Observation.rs @A | search-type | Fs ->Observation?patient=Patient/A",
    "GET Observation?patient=https://ehr.example/fhir/Patient/A | patient/Observation.rs @A | search-type | Fs",
    "GET Observation?patient=Patient%2FA | patient/Observation.rs @A | search-type | Fs ->Observation?patient=Patient/A",
    "GET Observation?pat%69ent=A | patient/Observation.rs @A | search-type | Fs ->Observation?patient=A",
    "GET Observation?subject=Patient/A | patient/Observation.rs @A | search-type | Fs ->Observation?subject=Patient/A",
    "GET Observation?subject=A | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient=B | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient=Patient/B | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?pat%69ent=B | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient=A,B | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient=A%2CB | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient=B,A | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient=A&patient=B | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient=A&patient=A | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient=A&subject=Patient/A | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient:missing=true | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient:Patient=A | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient:not=B | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?subject:missing=true | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient.name=x | patient/Observation.rs @A | search-type | X403:forbidden-parameter",
    "GET Observation?subject:Patient.name=x | patient/Observation.rs @A | search-type | X403:forbidden-parameter",
    "GET Observation?patient.identifier=x | patient/Observation.rs @A | search-type | X403:forbidden-parameter",
    "GET Observation?patient=http://evil/Patient/B | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient=Patient/A/_history/1 | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient=Patient/AB | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient=http://x,Patient/B/Patient/A | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient=Group/A | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?patient= | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?performer=Patient/A | patient/Observation.rs @A | search-type | Fs ->Observation?performer=Patient/A&patient=Patient/A narrowed",
    "GET Observation?performer=Patient/B | patient/Observation.rs @A | search-type | X403:compartment",
    "GET Observation?_has:Observation:patient:code=x | patient/Observation.rs @A | search-type | X403:forbidden-parameter",
    "GET Observation?_filter=code eq x | patient/Observation.rs @A | search-type | E:InvalidCharacter",
    "GET Observation?_filter=code%20eq%20x | patient/Observation.rs @A | search-type | X403:forbidden-parameter",
    "GET Observation?_query=x | patient/Observation.rs @A | search-type | X403:forbidden-parameter",
    "GET Observation?_contained=true | patient/Observation.rs @A | search-type | X403:forbidden-parameter",
    "GET Observation?_containedType=contained | patient/Observation.rs @A | search-type | X403:forbidden-parameter",
    "GET Observation?_list=1 | patient/Observation.rs @A | search-type | X403:forbidden-parameter",
    "GET Observation?_type=Patient | patient/Observation.rs @A | search-type | X403:forbidden-parameter",
    "GET Observation?code=x&_has:Group:member:_id=1 | patient/Observation.rs @A | search-type | X403:forbidden-parameter",
    "GET Observation?_elements=code | patient/Observation.rs @A | search-type | Fs ->Observation?patient=Patient/A",
    "GET Observation?_summary=count | patient/Observation.rs @A | search-type | Fs ->Observation?patient=Patient/A",
    "GET Observation?_summary=true&patient=A | patient/Observation.rs @A | search-type | Fs ->Observation?patient=A narrowed",
    "GET Observation?_include=Observation:patient | patient/Observation.rs @A | search-type | Fs ->Observation?_include=Observation:patient&patient=Patient/A",
    "GET Observation?_revinclude=Provenance:target | patient/Observation.rs @A | search-type | Fs",
    "GET Observation?_include:iterate=Observation:has-member | patient/Observation.rs @A | search-type | Fs",
    "GET Observation?_revinclude:iterate=Provenance:target | patient/Observation.rs @A | search-type | Fs",
    "GET Observation?code=x&_count=10&_sort=-date | patient/Observation.rs @A | search-type | Fs ->Observation?code=x&_count=10&_sort=-date&patient=Patient/A",
    "HEAD Observation | patient/Observation.rs @A | search-type | Fs ->Observation?patient=Patient/A",
    "GET Observation | patient/Observation.r @A | search-type | X403:no-scope",
    "GET Observation | patient/Condition.rs @A | search-type | X403:no-scope",
    "GET Observation | patient/Observation.rs | search-type | X403:no-patient-context",
    "GET Condition | patient/Condition.rs @A | search-type | Fs ->Condition?patient=Patient/A",
    "GET Condition?patient=A&category=problem-list-item | patient/Condition.rs @A | search-type | Fs",
    "GET Condition?asserter=Patient/A | patient/Condition.rs @A | search-type | Fs ->Condition?asserter=Patient/A&patient=Patient/A",
    "GET Encounter | patient/Encounter.rs @A | search-type | Fs ->Encounter?patient=Patient/A",
    "GET Encounter?subject=Patient/A | patient/Encounter.rs @A | search-type | Fs ->Encounter?subject=Patient/A",
    "GET MedicationRequest?intent=order | patient/MedicationRequest.rs @A | search-type | Fs ->MedicationRequest?intent=order&patient=Patient/A",
    "GET AllergyIntolerance | patient/AllergyIntolerance.rs @A | search-type | Fs ->AllergyIntolerance?patient=Patient/A",
    "GET DiagnosticReport?category=LAB | patient/DiagnosticReport.rs @A | search-type | Fs ->DiagnosticReport?category=LAB&patient=Patient/A",
    "GET DocumentReference | patient/DocumentReference.rs @A | search-type | Fs ->DocumentReference?patient=Patient/A",
    "GET Immunization | patient/Immunization.rs @A | search-type | Fs ->Immunization?patient=Patient/A",
    "GET Procedure | patient/Procedure.rs @A | search-type | Fs ->Procedure?patient=Patient/A",
    "GET CarePlan?category=assess-plan | patient/CarePlan.rs @A | search-type | Fs ->CarePlan?category=assess-plan&patient=Patient/A",
    "GET CareTeam?status=active | patient/CareTeam.rs @A | search-type | Fs ->CareTeam?status=active&patient=Patient/A",
    "GET Goal | patient/Goal.rs @A | search-type | Fs ->Goal?patient=Patient/A",
    "GET Provenance | patient/Provenance.rs @A | search-type | Fs ->Provenance?patient=Patient/A",
    "GET Coverage | patient/Coverage.rs @A | search-type | Fs ->Coverage?patient=Patient/A",
    "GET Account | patient/Account.rs @A | search-type | Fs ->Account?patient=Patient/A",
    "GET SupplyRequest | patient/SupplyRequest.rs @A | search-type | Fs ->SupplyRequest?subject=Patient/A",
    "GET Schedule | patient/Schedule.rs @A | search-type | Fs ->Schedule?actor=Patient/A",
    "GET Group | patient/Group.rs @A | search-type | Fs ->Group?member=Patient/A",
    "GET Group?member=A | patient/Group.rs @A | search-type | X403:compartment",
    "GET Group?member=Patient/A | patient/Group.rs @A | search-type | Fs ->Group?member=Patient/A",
    "GET AuditEvent | patient/AuditEvent.rs @A | search-type | Fs ->AuditEvent?patient=Patient/A",
    "GET Appointment | patient/Appointment.rs @A | search-type | Fs ->Appointment?patient=Patient/A",
    "GET ResearchSubject | patient/ResearchSubject.rs @A | search-type | Fs ->ResearchSubject?patient=Patient/A",
    "GET RelatedPerson | patient/RelatedPerson.rs @A | search-type | Fs ->RelatedPerson?patient=Patient/A",
    "GET Patient | patient/Patient.rs @A | search-type | Fs ->Patient?_id=A narrowed",
    "GET Patient?_id=A | patient/Patient.rs @A | search-type | Fs ->Patient?_id=A",
    "GET Patient?_id=B | patient/Patient.rs @A | search-type | X403:compartment",
    "GET Patient?_id=A,B | patient/Patient.rs @A | search-type | X403:compartment",
    "GET Patient?_id=Patient/A | patient/Patient.rs @A | search-type | X403:compartment",
    "GET Patient?_id:not=A | patient/Patient.rs @A | search-type | X403:compartment",
    "GET Patient?identifier=x | patient/Patient.rs @A | search-type | Fs ->Patient?identifier=x&_id=A",
    "GET Patient?name=x&_id=A | patient/Patient.rs @A | search-type | Fs ->Patient?name=x&_id=A",
    "GET Patient?link=Patient/B | patient/Patient.rs @A | search-type | Fs ->Patient?link=Patient/B&_id=A",
    "GET Patient?_revinclude=Observation:patient | patient/Patient.rs @A | search-type | Fs",
    "GET Patient?_has:Observation:patient:code=x | patient/Patient.rs @A | search-type | X403:forbidden-parameter",
    "GET Patient?general-practitioner.name=x | patient/Patient.rs @A | search-type | X403:forbidden-parameter",
    // ---- patient compartment: reads and history ----
    "GET Patient/A | patient/Patient.r @A | read | Fr",
    "GET Patient/B | patient/Patient.r @A | read | Fr",
    "GET Patient/A | patient/Patient.rs | read | X403:no-patient-context",
    "GET Observation/1/_history/2 | patient/Observation.r @A | vread | Fr",
    "GET Observation/1/_history | patient/Observation.r @A | history-instance | Fr",
    "GET Observation/1/_history | patient/Observation.s @A | history-instance | X403:no-scope",
    "GET Observation/_history | patient/Observation.rs @A | history-type | X403:history-not-narrowable",
    "GET Patient/_history | patient/Patient.rs @A | history-type | X403:history-not-narrowable",
    "GET _history | patient/*.rs @A | history-system | X403:history-not-narrowable",
    "GET _history | patient/*.rs user/*.s @A ~Practitioner/9 | history-system | Fs",
    // ---- patient compartment: compartment searches ----
    "GET Patient/A/Observation | patient/Observation.rs @A | search-compartment | Fs ->Patient/A/Observation",
    "GET Patient/A/Observation?code=x | patient/Observation.rs @A | search-compartment | Fs ->Patient/A/Observation?code=x",
    "GET Patient/A/* | patient/Observation.rs @A | search-compartment | Fs ->Patient/A/*",
    "GET Patient/A/* | patient/*.rs @A | search-compartment | Fs",
    "GET Patient/A/* | patient/*.r @A | search-compartment | X403:no-scope",
    "GET Patient/B/Observation | patient/Observation.rs @A | search-compartment | X403:compartment",
    "GET Patient/B/* | patient/*.rs @A | search-compartment | X403:compartment",
    "GET Patient/AB/Observation | patient/*.rs @A | search-compartment | X403:compartment",
    "GET Encounter/1/Observation | patient/Observation.rs @A | search-compartment | X403:compartment",
    "GET Practitioner/1/Observation | patient/Observation.rs @A | search-compartment | X403:compartment",
    "GET Patient/A/Observation?patient=B | patient/Observation.rs @A | search-compartment | X403:compartment",
    "GET Patient/A/Observation?patient=A | patient/Observation.rs @A | search-compartment | Fs",
    "GET Patient/A/Observation?_has:Observation:patient:code=x | patient/Observation.rs @A | search-compartment | X403:forbidden-parameter",
    "GET Patient/A/Observation?subject.name=x | patient/Observation.rs @A | search-compartment | X403:forbidden-parameter",
    "GET Patient/A/Condition | patient/Observation.rs @A | search-compartment | X403:no-scope",
    "GET Patient/A/Observation?_summary=count | patient/Observation.rs @A | search-compartment | Fs ->Patient/A/Observation narrowed",
    // ---- patient compartment: system search and _type ----
    "GET ^?_type=Observation,Condition | patient/Observation.rs patient/Condition.rs @A | search-system | Fs ->?_type=Observation,Condition&patient=Patient/A narrowed",
    "GET ^?_type=Observation,Condition | patient/Observation.rs @A | search-system | X403:no-scope",
    "GET ^?_type=Observation,Condition,Encounter | patient/*.rs @A | search-system | Fs ->?_type=Observation,Condition,Encounter&patient=Patient/A",
    "GET ^?_type=Observation | patient/*.rs @A | search-system | Fs ->?_type=Observation&patient=Patient/A",
    "GET ^?_type=Patient | patient/*.rs @A | search-system | Fs ->?_type=Patient&_id=A",
    "GET ^?_type=Observation,Patient | patient/*.rs @A | search-system | X403:compartment",
    "GET ^?_type=Observation,Group | patient/*.rs @A | search-system | X403:compartment",
    "GET ^?_type=Observation,Practitioner | patient/*.rs @A | search-system | X403:compartment",
    "GET ^?_type=Practitioner,Organization | patient/*.rs @A | search-system | Fs ->?_type=Practitioner,Organization",
    "GET ^?_type=Observation&patient=B | patient/*.rs @A | search-system | X403:compartment",
    "GET ^?_type=Observation&patient=A | patient/*.rs @A | search-system | Fs ->?_type=Observation&patient=A",
    "GET ^?_type=Observation&_has:Observation:patient:code=x | patient/*.rs @A | search-system | X403:forbidden-parameter",
    "GET ^ | patient/*.rs @A | search-system | X403:compartment",
    "GET ^?code=x | patient/*.rs @A | search-system | X403:compartment",
    "GET ^?_type=Observation,Condition | patient/*.rs !deny-nonmember @A | search-system | Fs",
    "GET ^?_type=Observation,Medication | patient/*.rs !deny-nonmember @A | search-system | X403:non-member",
    // ---- non-member types ----
    "GET Practitioner | patient/Practitioner.rs @A | search-type | Fs ->Practitioner",
    "GET Practitioner?name=x | patient/Practitioner.rs @A | search-type | Fs ->Practitioner?name=x",
    "GET Practitioner/1 | patient/Practitioner.rs @A | read | Fr",
    "GET Practitioner/1 | patient/Practitioner.rs !deny-nonmember @A | read | X403:non-member",
    "GET Practitioner | patient/Practitioner.rs !deny-nonmember @A | search-type | X403:non-member",
    "GET Practitioner?_has:PractitionerRole:practitioner:role=x | patient/Practitioner.rs @A | search-type | X403:forbidden-parameter",
    "GET Medication | patient/Medication.rs @A | search-type | Fs ->Medication",
    "GET Medication/1 | patient/Medication.rs @A | read | Fr",
    "GET Organization/1 | patient/Organization.rs @A | read | Fr",
    "GET Location | patient/Location.rs @A | search-type | Fs",
    "GET Binary/1 | patient/Binary.r @A | read | Fr",
    "GET Device | patient/Device.rs @A | search-type | Fs ->Device?patient=Patient/A narrowed",
    "GET Device?patient=A | patient/Device.rs @A | search-type | Fs ->Device?patient=A",
    "GET Device?patient=B | patient/Device.rs @A | search-type | X403:compartment",
    "GET Device?patient:missing=true | patient/Device.rs @A | search-type | X403:compartment",
    "GET Device/1 | patient/Device.rs @A | read | Fr",
    "GET Device | patient/Device.rs !deny-nonmember @A | search-type | Fs ->Device?patient=Patient/A",
    // ---- patient compartment: writes ----
    "POST Observation | patient/Observation.c @A | create | Wc +body",
    "POST Observation | patient/Observation.rs @A | create | X403:no-scope",
    "POST Observation | patient/Observation.write @A | create | Wc +body",
    "POST Observation | patient/Observation.c | create | X403:no-patient-context",
    "POST Patient | patient/Patient.c @A | create | X403:compartment",
    "POST Patient | patient/Patient.c @A | conditional-create | X403:compartment | ine:identifier=x",
    "PUT Patient/A | patient/Patient.u @A | update | Wu +pre +body",
    "PUT Patient/B | patient/Patient.u @A | update | X403:compartment",
    "PATCH Patient/A | patient/Patient.u @A | patch | Wu +pre +body",
    "PATCH Patient/B | patient/Patient.u @A | patch | X403:compartment",
    "DELETE Patient/A | patient/Patient.d @A | delete | Wd +pre",
    "DELETE Patient/B | patient/Patient.d @A | delete | X403:compartment",
    "PUT Observation/1 | patient/Observation.u @A | update | Wu +pre +body",
    "PUT Observation/1 | patient/Observation.c @A | update | X403:no-scope",
    "PATCH Observation/1 | patient/Observation.u @A | patch | Wu +pre +body",
    "DELETE Observation/1 | patient/Observation.d @A | delete | Wd +pre",
    "DELETE Observation/1 | patient/Observation.rs @A | delete | X403:no-scope",
    "POST Observation | patient/Observation.c @A | conditional-create | Wc +body ine=identifier=x&patient=Patient/A narrowed | ine:identifier=x",
    "POST Observation | patient/Observation.c @A | conditional-create | Wc +body ine=identifier=x&patient=A | ine:identifier=x&patient=A",
    "POST Observation | patient/Observation.c @A | conditional-create | X403:compartment | ine:patient=B",
    "POST Observation | patient/Observation.c @A | conditional-create | X403:forbidden-parameter | ine:_has:Observation:patient:code=x",
    "PUT Observation?identifier=x | patient/Observation.us @A | conditional-update | Wu +pre +body ->Observation?identifier=x&patient=Patient/A narrowed",
    "PUT Observation?identifier=x | patient/Observation.u @A | conditional-update | X403:no-scope",
    "PUT Observation?identifier=x&patient=B | patient/Observation.us @A | conditional-update | X403:compartment",
    "PUT Observation?identifier=x&patient=A,B | patient/Observation.us @A | conditional-update | X403:compartment",
    "PUT Observation?subject.name=x | patient/Observation.us @A | conditional-update | X403:forbidden-parameter",
    "PATCH Observation?identifier=x | patient/Observation.us @A | conditional-patch | Wu +pre +body ->Observation?identifier=x&patient=Patient/A",
    "PATCH Observation?patient=B | patient/Observation.us @A | conditional-patch | X403:compartment",
    "DELETE Observation?identifier=x | patient/Observation.ds @A | conditional-delete | Wd +pre ->Observation?identifier=x&patient=Patient/A",
    "DELETE Observation?identifier=x | patient/Observation.d @A | conditional-delete | X403:no-scope",
    "DELETE Observation?_has:Observation:patient:code=x | patient/Observation.ds @A | conditional-delete | X403:forbidden-parameter",
    "DELETE Patient?identifier=x | patient/Patient.ds @A | conditional-delete | Wd +pre ->Patient?identifier=x&_id=A",
    "DELETE Patient?_id=B | patient/Patient.ds @A | conditional-delete | X403:compartment",
    "PUT Practitioner/1 | patient/Practitioner.u @A | update | Wu +pre +body",
    "PUT Practitioner/1 | patient/Practitioner.u !deny-nonmember @A | update | X403:non-member",
    "PUT Patient/A | patient/Patient.u user/Patient.u @A ~Practitioner/9 | update | Wu",
    // ---- patient compartment: operations ----
    "GET Patient/A/$everything | patient/Patient.rs @A | operation | Fs ->Patient/A/$everything",
    "POST Patient/A/$everything | patient/Patient.rs @A | operation | Fs",
    "GET Patient/B/$everything | patient/Patient.rs @A | operation | X403:compartment",
    "GET Patient/A/$everything | patient/Patient.r @A | operation | X403:no-scope",
    "GET Patient/A/$everything | patient/*.* @A | operation | Fs",
    "GET Patient/A/$everything?_elements=id | patient/Patient.rs @A | operation | Fs ->Patient/A/$everything narrowed",
    "GET Patient/A/$everything?_type=Observation&_count=5 | patient/Patient.rs @A | operation | Fs ->Patient/A/$everything?_type=Observation&_count=5",
    "GET Patient/A/$everything | patient/Patient.rs | operation | X403:no-patient-context",
    "GET Patient/A/$validate | patient/Patient.rs @A | operation | X403:operation-not-allowed",
    "GET Patient/$everything | patient/Patient.rs @A | operation | X403:operation-not-allowed",
    "GET $graphql | patient/*.* @A | operation | X403:operation-not-allowed",
    // ---- unions across contexts ----
    "GET Observation?_has:Observation:patient:code=x | patient/Observation.rs user/*.s @A ~Practitioner/9 | search-type | Fs",
    "GET Observation | patient/Observation.rs user/Observation.s @A ~Practitioner/9 | search-type | Fs",
    "GET Observation | patient/Observation.rs system/Observation.s @A | search-type | Fs ->Observation?patient=Patient/A",
    "GET Observation?patient=B | patient/Observation.rs user/Observation.rs @A ~Practitioner/9 | search-type | Fs ->Observation?patient=B",
    "GET Observation/_history | patient/Observation.rs user/Observation.s @A ~Practitioner/9 | history-type | Fs",
    "GET Observation | patient/Observation.rs user/Observation.rs?category=lab @A ~Practitioner/9 | search-type | Fs ->Observation?patient=Patient/A",
    "GET Observation/_history | patient/Observation.rs user/Observation.rs?category=lab @A ~Practitioner/9 | history-type | X403:history-not-narrowable",
    "GET Observation | patient/Observation.rs patient/Observation.rs @A | search-type | Fs",
    // ---- fhirUser reads itself ----
    "GET Practitioner/9 | openid fhirUser ~Practitioner/9 | read | P code=fhir-user",
    "GET Practitioner/9/_history/1 | openid fhirUser ~Practitioner/9 | vread | P code=fhir-user",
    "GET Practitioner/8 | openid fhirUser ~Practitioner/9 | read | X403:no-scope",
    "GET Practitioner/9 | openid ~Practitioner/9 | read | X403:no-scope",
    "GET Practitioner/9 | openid fhirUser ~https://ehr.example/fhir/Practitioner/9 | read | P code=fhir-user",
    "GET Patient/9 | openid fhirUser ~Practitioner/9 | read | X403:no-scope",
    "GET Practitioner?_id=9 | openid fhirUser ~Practitioner/9 | search-type | X403:no-scope",
    "GET Patient/A | openid fhirUser ~Patient/A @A | read | P code=fhir-user",
];

fn letter(c: char) -> Letter {
    match c {
        'c' => Letter::C,
        'r' => Letter::R,
        'u' => Letter::U,
        'd' => Letter::D,
        's' => Letter::S,
        _ => panic!("bad letter {c}"),
    }
}

fn export_rule() -> OperationRule {
    OperationRule {
        levels: vec![
            OperationLevel::System,
            OperationLevel::Type,
            OperationLevel::Instance,
        ],
        types: vec![ResourceType::PATIENT, ResourceType::GROUP],
        letters: vec![Letter::R],
    }
}

fn grant_and_rules(spec: &str) -> (Grant, Rules) {
    let mut rules = Rules::default();
    let mut scopes = Vec::new();
    let (mut patient, mut user) = (None, None);
    for tok in spec.split_whitespace() {
        match tok {
            "-" => {}
            "!export" => {
                rules.operations.insert("export".into(), export_rule());
            }
            "!deny-nonmember" => rules.non_member_types = NonMemberAccess::Deny,
            t if t.starts_with('@') => patient = Some(t[1..].to_owned()),
            t if t.starts_with('~') => user = Some(t[1..].to_owned()),
            t => scopes.push(t),
        }
    }
    let grant = Grant {
        issuer: None,
        subject: None,
        client_id: Some("app".into()),
        fhir_user: user,
        patient,
        encounter: None,
        expires_at: 0,
        scopes: ScopeSet::from_iter(scopes),
        kind: TokenKind::Jwt,
        token_hash: [0; 32],
    };
    (grant, rules)
}

/// Classifies `upstream_target` again (with the upstream method and `If-None-Exist`)
/// and checks it is the same request.
fn assert_round_trip(req: &FhirRequest, line: &str) {
    if matches!(
        req.interaction,
        Interaction::Batch | Interaction::Transaction
    ) {
        return;
    }
    let target = req.upstream_target();
    let method = if req.head {
        Method::HEAD
    } else {
        req.upstream_method(&Method::POST)
    };
    let again = classify_entry(&method, &target, req.if_none_exist().as_deref())
        .unwrap_or_else(|e| panic!("{line}: re-classifying {target:?} failed: {e:?}"));
    assert_eq!(&again, req, "{line}: round trip of {target:?}");
}

fn run(line: &str) {
    let f: Vec<&str> = line.split(" | ").map(str::trim).collect();
    assert!(f.len() >= 4, "{line}: too few fields");
    let (req_spec, grant_spec, want_interaction, expect) = (f[0], f[1], f[2], f[3]);
    let mut headers = HeaderMap::new();
    let mut body: Option<Vec<u8>> = None;
    let mut ine: Option<String> = None;
    for extra in &f[4..] {
        let (k, v) = extra.split_once(':').unwrap();
        match k {
            "ct" => {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            "body" => body = Some(v.as_bytes().to_vec()),
            "ine" => ine = Some(v.to_owned()),
            "h" => {
                let (n, val) = v.split_once('=').unwrap();
                headers.insert(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(val).unwrap(),
                );
            }
            _ => panic!("{line}: unknown extra {k}"),
        }
    }
    let (entry, rest) = match req_spec.strip_prefix("ENTRY ") {
        Some(r) => (true, r),
        None => (false, req_spec),
    };
    let (method, target) = rest.split_once(' ').unwrap_or((rest, ""));
    let target = target.strip_prefix('^').unwrap_or(target);
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let classified = if entry {
        classify_entry(&method, target, ine.as_deref())
    } else {
        if let Some(v) = &ine {
            headers.insert("if-none-exist", HeaderValue::from_str(v).unwrap());
        }
        classify(&RawRequest {
            method: &method,
            path,
            query,
            headers: &headers,
            body: body.as_deref(),
        })
    };
    let mut tokens = expect.split_whitespace();
    let outcome = tokens.next().unwrap();
    if let Some(variant) = outcome.strip_prefix("E:") {
        let err: ClassifyError = match classified {
            Err(e) => e,
            Ok(r) => panic!("{line}: expected {variant}, classified as {r:?}"),
        };
        assert_eq!(format!("{err:?}"), variant, "{line}");
        assert!(matches!(err.status(), 400 | 404 | 405 | 415), "{line}");
        assert!(!err.to_string().is_empty());
        return;
    }
    let req = classified.unwrap_or_else(|e| panic!("{line}: classify failed: {e:?}"));
    assert_eq!(req.interaction.name(), want_interaction, "{line}");
    assert_eq!(req.head, method == Method::HEAD, "{line}");
    assert_round_trip(&req, line);

    let (grant, rules) = grant_and_rules(grant_spec);
    let d: Decision = authorize(&grant, &req, &rules);
    let mut want_pre = false;
    let mut want_body = false;
    let mut want_narrowed = false;
    match (&d.outcome, outcome) {
        (Outcome::Reject(r), o) if o.starts_with('X') => {
            let (status, code) = o[1..].split_once(':').unwrap();
            assert_eq!(r.status.to_string(), status, "{line}: {d:?}");
            assert_eq!(d.reason.code, code, "{line}: {d:?}");
            assert_eq!(
                r.issue,
                if r.status == 403 {
                    "forbidden"
                } else {
                    "invalid"
                }
            );
            assert!(!r.message.is_empty());
        }
        (Outcome::Forward(plan), "P") => {
            assert_eq!(plan.response, ResponseRule::PassThrough, "{line}: {d:?}");
        }
        (Outcome::Forward(plan), o) if o.starts_with('F') || o.starts_with('W') => {
            let view = match (&plan.response, &o[..1]) {
                (ResponseRule::Filter(v), "F") | (ResponseRule::Written(v), "W") => v,
                _ => panic!("{line}: expected {o}, got {d:?}"),
            };
            assert_eq!(
                view.letter,
                letter(o.chars().nth(1).unwrap()),
                "{line}: {d:?}"
            );
            if view.context == Context::Patient {
                assert_eq!(view.patient, grant.patient, "{line}");
            } else {
                assert_eq!(view.patient, None, "{line}");
            }
        }
        _ => panic!("{line}: expected {outcome}, got {d:?}"),
    }
    for tok in tokens {
        let plan = match &d.outcome {
            Outcome::Forward(p) => Some(p),
            Outcome::Reject(_) => None,
        };
        if let Some(t) = tok.strip_prefix("->") {
            let plan = plan.unwrap();
            assert_eq!(plan.request.upstream_target(), t, "{line}");
        } else if let Some(t) = tok.strip_prefix("ine=") {
            assert_eq!(
                plan.unwrap().request.if_none_exist().as_deref(),
                Some(t),
                "{line}"
            );
        } else if let Some(t) = tok.strip_prefix("scope=") {
            assert_eq!(d.reason.scope.as_deref(), Some(t), "{line}: {d:?}");
        } else if let Some(t) = tok.strip_prefix("code=") {
            assert_eq!(d.reason.code, t, "{line}: {d:?}");
        } else if let Some(t) = tok.strip_prefix("detail~") {
            assert!(d.reason.detail.contains(t), "{line}: {d:?}");
        } else {
            match tok {
                "+pre" => want_pre = true,
                "+body" => want_body = true,
                "narrowed" => want_narrowed = true,
                _ => panic!("{line}: unknown token {tok}"),
            }
        }
    }
    if let Outcome::Forward(plan) = &d.outcome {
        assert_eq!(plan.precheck.is_some(), want_pre, "{line}: {d:?}");
        assert_eq!(plan.body_check.is_some(), want_body, "{line}: {d:?}");
        if want_narrowed {
            assert!(plan.narrowed, "{line}: {d:?}");
        }
        assert_eq!(plan.narrowed, plan.request != req, "{line}: {d:?}");
        if plan.narrowed {
            assert!(d.reason.detail.contains("narrowed"), "{line}: {d:?}");
        }
        // What is forwarded parses back to itself.
        assert_round_trip(&plan.request, line);
        if let Some(v) = plan.precheck.as_ref().or(plan.body_check.as_ref()) {
            assert_eq!(
                Some(v),
                match &plan.response {
                    ResponseRule::Filter(f) | ResponseRule::Written(f) => Some(f),
                    ResponseRule::PassThrough => None,
                }
            );
        }
    }
}

#[test]
fn table() {
    let mut failures = Vec::new();
    for line in CASES {
        if let Err(e) = std::panic::catch_unwind(|| run(line)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(msg);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn table_is_large_enough() {
    assert!(CASES.len() >= 300, "only {} cases", CASES.len());
}
