//! The original destination of a connection redirected to the proxy by netfilter (`SO_ORIGINAL_DST`).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

const SO_ORIGINAL_DST: libc::c_int = 80;
const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

/// The address the client dialled before the redirect; `None` when the connection was not redirected (or the
/// kernel keeps no conntrack entry for it).
pub fn original_dst<S: AsRawFd>(socket: &S, ipv6: bool) -> io::Result<Option<SocketAddr>> {
    let fd = socket.as_raw_fd();
    // SAFETY: a zeroed sockaddr_storage is valid; getsockopt writes at most `len` bytes into it.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let (level, name) = if ipv6 { (libc::SOL_IPV6, IP6T_SO_ORIGINAL_DST) } else { (libc::SOL_IP, SO_ORIGINAL_DST) };
    let rc =
        unsafe { libc::getsockopt(fd, level, name, (&mut storage as *mut libc::sockaddr_storage).cast(), &mut len) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP) => Ok(None),
            _ => Err(err),
        };
    }
    Ok(parse_sockaddr(&storage, len as usize))
}

/// Decodes a `sockaddr_in` / `sockaddr_in6` as the kernel wrote it (network byte order).
pub fn parse_sockaddr(storage: &libc::sockaddr_storage, len: usize) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: family and length say this is a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: family and length say this is a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_and_ipv6_in_network_order() {
        let mut s: libc::sockaddr_storage = unsafe { zeroed() };
        {
            let sin: &mut libc::sockaddr_in = unsafe { &mut *(&mut s as *mut libc::sockaddr_storage).cast() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = 443u16.to_be();
            sin.sin_addr.s_addr = u32::from(Ipv4Addr::new(93, 184, 215, 14)).to_be();
        }
        assert_eq!(parse_sockaddr(&s, size_of::<libc::sockaddr_in>()), Some("93.184.215.14:443".parse().unwrap()));
        assert_eq!(parse_sockaddr(&s, 4), None, "short length");

        let mut s: libc::sockaddr_storage = unsafe { zeroed() };
        {
            let sin6: &mut libc::sockaddr_in6 = unsafe { &mut *(&mut s as *mut libc::sockaddr_storage).cast() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = 8443u16.to_be();
            sin6.sin6_addr.s6_addr = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets();
        }
        assert_eq!(parse_sockaddr(&s, size_of::<libc::sockaddr_in6>()), Some("[2001:db8::7]:8443".parse().unwrap()));
        let s: libc::sockaddr_storage = unsafe { zeroed() };
        assert_eq!(parse_sockaddr(&s, size_of::<libc::sockaddr_storage>()), None, "AF_UNSPEC");
    }

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_none_or_its_own_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        // Without conntrack the kernel has no entry (None); with it, an unredirected socket reports its own address.
        match original_dst(&accepted, false).unwrap() {
            None => {}
            Some(dst) => assert_eq!(dst, addr),
        }
    }
}
