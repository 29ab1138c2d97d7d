import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // e2e tests build network namespaces and run real iptables; two cores are enough for two files at once.
    maxWorkers: 2,
    reporters: ['default'],
    coverage: { include: ['src/**/*.ts'] },
  },
});
