def test_nearest_zip_78201_puts_san_antonio_first(client):
    response = client.get("/v1/locations/nearest?zip=78201&limit=3")
    assert response.status_code == 200
    body = response.get_json()
    assert [hit["location"]["city"] for hit in body["results"]] == ["San Antonio"] * 3
