// A separate bundle (dist/exec.cjs), loaded only when a process is about to start: dry runs skip execa's start-up.
export { execa } from 'execa';
