/** What a proxy registration contributes to the ruleset (reference §2.2). */
export interface ProxyPorts {
  inboundPort: number;
  outboundPort: number;
  /** Prometheus, stats, expose paths and exposed checks, in Consul's order. */
  excludeInboundPorts: string[];
}
