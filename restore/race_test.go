//go:build race

package restore_test

// Under the race detector every restored task is a race-enabled process of
// ~15 MB: TestThousandTasks restores fewer of them.
const raceEnabled = true
