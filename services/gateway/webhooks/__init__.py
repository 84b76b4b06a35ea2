"""The gateway's webhook service: WebhookService (subscriptions, delivery log, replays) and the dispatcher that
sends Haulmesh events to the carriers' subscriptions as signed HTTPS POSTs (protos/haulmesh/gateway/v1)."""
