//go:build race

package auth

// raceEnabled scales load tests down: the race detector slows HTTP round trips ~10×.
const raceEnabled = true
