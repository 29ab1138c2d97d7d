// Facts from a network namespace's /proc/net files, as read inside it. Pure: the host reads the files.

/** iptables-legacy lists the tables it has loaded (ip_tables_names, ip6_tables_names); reading loads none. */
export const listsTables = (namesFile: string) => namesFile.trim() !== '';

/**
 * Whether if_inet6 lists an address of global scope: IPv6 traffic that IPv4-only rules would not see. Each
 * line: "20010db8000000000000000000000001 02 40 00 80 eth0" (address, ifindex, prefix length, scope, flags,
 * name); scope 00 is global, as `ip -6 address show scope global` counts it.
 */
export const listsGlobalIpv6 = (ifInet6File: string) => ifInet6File.split('\n').some((line) => line.trim().split(/\s+/)[3] === '00');
