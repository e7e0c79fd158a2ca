"""The VIP balancer: connections to a service's clusterIP:port go to its ready endpoints."""
