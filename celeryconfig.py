broker_url = ""
