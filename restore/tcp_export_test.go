package restore

// SilenceTCP exposes silenceTCP to the package's external tests.
var SilenceTCP = silenceTCP
