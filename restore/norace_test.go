//go:build !race

package restore_test

const raceEnabled = false
