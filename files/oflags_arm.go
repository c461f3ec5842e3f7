//go:build arm64 || arm

package files

const oLargefile = 0o400000
