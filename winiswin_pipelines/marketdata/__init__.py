"""Binance USDT-M market data: capture and kline readers, order-book rebuild, trade bars, live feed."""
