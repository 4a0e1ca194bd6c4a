"""Sans-I/O unit tests of the two codecs: exact bytes, exact messages and the
boundaries of every limit (written for mutation testing: each case pins one
decision in squeezed/rpc/jsonrpc.py or squeezed/rpc/xmlrpc.py). Expected
values are written out by hand, never produced by the codec under test.
"""

from __future__ import annotations

import pytest

from squeezed.rpc import CodecError, jsonrpc, xmlrpc

# ============================================================== JSON-RPC


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


class TestJsonLoads:
    def test_size_limit_is_inclusive(self) -> None:
        pad = jsonrpc.MAX_BODY - 2
        assert jsonrpc.loads(b'"' + b"a" * pad + b'"') == "a" * pad  # exactly MAX_BODY
        with pytest.raises(jsonrpc.JsonRpcError, match=r"^body larger than 1048576 bytes$"):
            jsonrpc.loads(b'"' + b"a" * (pad + 1) + b'"')

    def test_bytes_like_and_str(self) -> None:
        assert jsonrpc.loads(bytearray(b"[1]")) == [1]
        assert jsonrpc.loads(memoryview(b"[2]")) == [2]
        assert jsonrpc.loads("[3]") == [3]
        assert jsonrpc.loads("é".join(['"', '"']).encode()) == "é"

    def test_bad_input_type(self) -> None:
        with pytest.raises(jsonrpc.JsonRpcError, match=r"^body must be bytes, not int$"):
            jsonrpc.loads(5)  # type: ignore[arg-type]

    def test_not_utf8(self) -> None:
        with pytest.raises(jsonrpc.JsonRpcError, match=r"^body is not UTF-8: "):
            jsonrpc.loads(b'"\xff"')

    @pytest.mark.parametrize("const", ["NaN", "Infinity", "-Infinity"])
    def test_non_json_constants(self, const: str) -> None:
        with pytest.raises(jsonrpc.JsonRpcError, match=f"^{const} is not JSON$"):
            jsonrpc.loads(f"[{const}]")

    def test_invalid_json_message_is_bounded(self) -> None:
        with pytest.raises(jsonrpc.JsonRpcError, match=r"^invalid JSON: Unterminated string") as e:
            jsonrpc.loads("{" + '"' + "x" * 1000)
        assert len(str(e.value)) <= len("invalid JSON: ") + 200

    def test_huge_int_and_deep_recursion_are_codec_errors(self) -> None:
        with pytest.raises(jsonrpc.JsonRpcError, match=r"^invalid JSON: "):
            jsonrpc.loads("1" * 5000)  # beyond Python's int-conversion limit
        with pytest.raises(jsonrpc.JsonRpcError):
            jsonrpc.loads(nested_json(100000))

    def test_depth_limit_is_inclusive(self) -> None:
        assert jsonrpc.loads(nested_json(65)) is not None  # depths 0..64
        with pytest.raises(jsonrpc.JsonRpcError, match=r"^value nested too deeply$"):
            jsonrpc.loads(nested_json(66))
        objs = '{"a":' * 65 + "1" + "}" * 65  # values at depth 65 inside dicts
        with pytest.raises(jsonrpc.JsonRpcError, match="nested too deeply"):
            jsonrpc.loads(objs)
        assert jsonrpc.loads('{"a":' * 64 + "1" + "}" * 64) is not None
        wide = "[" + ",".join([nested_json(1)] * 3 + [nested_json(65)]) + "]"
        with pytest.raises(jsonrpc.JsonRpcError):
            jsonrpc.loads(wide)  # the deep one is not the first

    def test_duplicate_keys_first_wins(self) -> None:
        assert jsonrpc.loads('{"a":1,"a":2,"b":3}') == {"a": 1, "b": 3}


class TestJsonDumps:
    def test_compact_utf8_and_del(self) -> None:
        assert jsonrpc.dumps({"a": [1, "é\x7f"], "b": None}) == \
            b'{"a":[1,"\xc3\xa9\\u007f"],"b":null}'

    def test_lone_surrogate_is_replaced(self) -> None:
        assert jsonrpc.dumps("\ud800") == b'"?"'

    @pytest.mark.parametrize("v", [float("nan"), float("inf"), {1j: 1}, object()])
    def test_unencodable(self, v: object) -> None:
        with pytest.raises(jsonrpc.JsonRpcError, match=r"^cannot encode: "):
            jsonrpc.dumps(v)

    def test_encode_call_success_failure_bytes(self) -> None:
        assert jsonrpc.encode_call("m", ("d", 1), 8) == b'{"method":"m","params":["d",1],"id":8}'
        assert jsonrpc.encode_call("m", []) == b'{"method":"m","params":[],"id":0}'
        assert jsonrpc.encode_success(5, "x") == b'{"result":5,"error":null,"id":"x"}'
        assert jsonrpc.encode_success(5) == b'{"result":5,"error":null,"id":null}'
        assert jsonrpc.encode_failure(["E", 1], 3) == b'{"result":null,"error":["E",1],"id":3}'
        for bad in (True, 1.5, [1], {"a": 1}):
            assert jsonrpc.encode_success(1, bad) == b'{"result":1,"error":null,"id":null}'
            assert jsonrpc.encode_failure(1, bad) == b'{"result":null,"error":1,"id":null}'


class TestJsonParseCall:
    def test_v1(self) -> None:
        assert jsonrpc.parse_call(b'{"method":"m","params":[1,"a"],"id":7}') == ("m", [1, "a"], 7)
        assert jsonrpc.parse_call('{"method":"m","params":[],"id":"s"}') == ("m", [], "s")
        assert jsonrpc.parse_call('{"method":"m","params":[]}') == ("m", [], None)

    def test_v2(self) -> None:
        assert jsonrpc.parse_call('{"jsonrpc":"2.0","method":"m","id":1}') == ("m", [], 1)
        assert jsonrpc.parse_call('{"jsonrpc":"2.0","method":"m","params":{"a":1},"id":1}') == \
            ("m", [{"a": 1}], 1)
        assert jsonrpc.parse_call('{"jsonrpc":"2.0","method":"m","params":[2]}') == \
            ("m", [2], None)

    @pytest.mark.parametrize("body,message", [
        ("[1]", "request is not a JSON object"),
        ('{"params":[]}', "invalid field 'method'"),
        ('{"method":"","params":[]}', "invalid field 'method'"),
        ('{"method":5,"params":[]}', "invalid field 'method'"),
        ('{"jsonrpc":"1.0","method":"m","params":[]}', "invalid field 'jsonrpc'"),
        ('{"jsonrpc":null,"method":"m","params":[]}', "invalid field 'jsonrpc'"),
        ('{"method":"m"}', "invalid field 'params'"),
        ('{"method":"m","params":{"a":1}}', "invalid field 'params'"),
        ('{"method":"m","params":"x"}', "invalid field 'params'"),
        ('{"jsonrpc":"2.0","method":"m","params":"x"}', "invalid field 'params'"),
        ('{"method":"m","params":[],"id":true}', "invalid field 'id'"),
        ('{"method":"m","params":[],"id":1.5}', "invalid field 'id'"),
        ('{"method":"m","params":[],"id":[1]}', "invalid field 'id'"),
    ])
    def test_malformed(self, body: str, message: str) -> None:
        with pytest.raises(jsonrpc.JsonRpcError, match=f"^{message}$"):
            jsonrpc.parse_call(body)


class TestJsonParseResponse:
    @pytest.mark.parametrize("body,expected", [
        ('{"result":5,"error":null,"id":1}', ("Success", 5)),
        ('{"result":null,"error":["E"],"id":1}', ("Failure", ["E"])),
        ('{"result":null,"error":null,"id":1}', ("Success", None)),
        ('{"jsonrpc":"2.0","result":null,"id":1}', ("Success", None)),
        ('{"jsonrpc":"2.0","error":{"code":1},"id":1}', ("Failure", {"code": 1})),
    ])
    def test_ok(self, body: str, expected: tuple) -> None:
        assert jsonrpc.parse_response(body) == expected

    @pytest.mark.parametrize("body,message", [
        ("[1]", "reply is not a JSON object"),
        ('{"jsonrpc":"1.0","result":1}', "invalid field 'jsonrpc'"),
        ('{"jsonrpc":"2.0","result":1,"error":2}', "need exactly one of result and error"),
        ('{"jsonrpc":"2.0","id":1}', "need exactly one of result and error"),
        ('{"result":1}', "reply needs result and error"),
        ('{"error":1}', "reply needs result and error"),
        ('{"result":1,"error":2}', "reply has both result and error"),
    ])
    def test_malformed(self, body: str, message: str) -> None:
        with pytest.raises(jsonrpc.JsonRpcError, match=f"^{message}$"):
            jsonrpc.parse_response(body)


def test_json_errors_are_codec_errors() -> None:
    assert issubclass(jsonrpc.JsonRpcError, CodecError)
    assert issubclass(xmlrpc.XmlRpcError, CodecError)


# ============================================================== XML-RPC

H = '<?xml version="1.0"?>'


def v(inner: str) -> str:
    return f"<value>{inner}</value>"


class TestXmlEncode:
    @pytest.mark.parametrize("value,xml", [
        (None, "<value><nil/></value>"),
        (True, "<value><boolean>1</boolean></value>"),
        (False, "<value><boolean>0</boolean></value>"),
        (0, "<value>0</value>"),
        (-(2**63), "<value>-9223372036854775808</value>"),
        (2**63 - 1, "<value>9223372036854775807</value>"),
        (1.5, "<value><double>1.5</double></value>"),
        (0.1, "<value><double>0.1</double></value>"),
        (1 / 3, "<value><double>0.3333333333333333</double></value>"),
        ('a<b>&"\'', "<value>a&lt;b&gt;&amp;&quot;'</value>"),
        ("t\tn\nr\r\x00\x01\x1f", "<value>t\tn\nr\r</value>"),
        (b"\x00\xff", "<value><base64>AP8=</base64></value>"),
        (bytearray(b"hi"), "<value><base64>aGk=</base64></value>"),
        ([1, [2]], "<value><array><data><value>1</value><value><array><data><value>2</value>"
                   "</data></array></value></data></array></value>"),
        ((), "<value><array><data></data></array></value>"),
        ({"k&": 1, "b": None}, "<value><struct><member><name>k&amp;</name><value>1</value>"
                               "</member><member><name>b</name><value><nil/></value></member>"
                               "</struct></value>"),
    ])
    def test_values(self, value: object, xml: str) -> None:
        assert xmlrpc.encode_value(value) == xml

    @pytest.mark.parametrize("value,message", [
        (2**63, "integer out of int64 range: 9223372036854775808"),
        (-(2**63) - 1, "integer out of int64 range: -9223372036854775809"),
        ({1: 2}, "struct member name is not a string: 1"),
        (object(), "cannot encode a object"),
        ({1.5}, "cannot encode a set"),
    ])
    def test_unencodable(self, value: object, message: str) -> None:
        with pytest.raises(xmlrpc.XmlRpcError, match=f"^{message}$"):
            xmlrpc.encode_value(value)

    def test_depth_limit_is_inclusive(self) -> None:
        deep: list = []
        for _ in range(64):
            deep = [deep]
        assert xmlrpc.encode_value(deep).count("<array>") == 65  # depths 0..64
        with pytest.raises(xmlrpc.XmlRpcError, match="^value nested too deeply$"):
            xmlrpc.encode_value([deep])
        d: dict = {}
        for _ in range(65):
            d = {"a": d}
        with pytest.raises(xmlrpc.XmlRpcError, match="nested too deeply"):
            xmlrpc.encode_value(d)

    def test_call_and_replies(self) -> None:
        assert xmlrpc.encode_call("m&", ["d", 1]) == (
            f"{H}<methodCall><methodName>m&amp;</methodName><params><param><value>d</value>"
            "</param><param><value>1</value></param></params></methodCall>").encode()
        assert xmlrpc.encode_call("m", []) == \
            f"{H}<methodCall><methodName>m</methodName><params></params></methodCall>".encode()
        st = "<member><name>Status</name><value>{}</value></member>"
        assert xmlrpc.encode_success("é") == (
            f"{H}<methodResponse><params><param><value><struct>{st.format('Success')}"
            "<member><name>Value</name><value>é</value></member>"
            "</struct></value></param></params></methodResponse>").encode()
        assert xmlrpc.encode_failure(["E", 1]) == (
            f"{H}<methodResponse><params><param><value><struct>{st.format('Failure')}"
            "<member><name>ErrorDescription</name><value><array><data><value>E</value>"
            "<value>1</value></data></array></value></member>"
            "</struct></value></param></params></methodResponse>").encode()
        assert xmlrpc.encode_success("\ud800").endswith(b"<value>?</value></member>"
                                                        b"</struct></value></param></params>"
                                                        b"</methodResponse>")


class TestXmlParseValue:
    @pytest.mark.parametrize("xml,value", [
        (v(""), ""),
        (v(" a "), " a "),
        (v("<int> 5 </int>"), 5),
        (v("<i4>-5</i4>"), -5),
        (v("<i8>+7</i8>"), 7),
        (v("<string>s</string>"), "s"),
        (v("<string/>"), ""),
        (v("<dateTime.iso8601>20260101T00:00:00</dateTime.iso8601>"), "20260101T00:00:00"),
        (v("<boolean>1</boolean>"), True),
        (v("<boolean> TRUE </boolean>"), True),
        (v("<boolean>0</boolean>"), False),
        (v("<boolean>false</boolean>"), False),
        (v("<double> 1.25 </double>"), 1.25),
        (v("<base64>AP8=</base64>"), b"\x00\xff"),
        (v("<base64> AP\n8= </base64>"), b"\x00\xff"),
        (v("<nil/>"), None),
        (v("<nil> </nil>"), None),
        (v("<array><data></data></array>"), []),
        (v("<array></array>"), []),
        (v("<array> <data> <value>1</value> <value>x</value> </data> </array>"), ["1", "x"]),
        (v("<struct></struct>"), {}),
        (v("<struct><member><name>a</name><value>1</value></member>"
           "<member><name>a</name><value>2</value></member></struct>"), {"a": "1"}),
        (v(" <int>3</int> "), 3),
    ])
    def test_values(self, xml: str, value: object) -> None:
        assert xmlrpc.parse_value(xml) == value
        assert xmlrpc.parse_value(xml.encode()) == value

    @pytest.mark.parametrize("xml,message", [
        ("<x/>", "expected <value>, got <x>"),
        (v("<int>1.5</int>"), "not an integer: '1.5'"),
        (v("<int>" + "1" * 41 + "</int>"), "not an integer: '" + "1" * 41 + "'"),
        (v("<int><i/></int>"), "<int> must not contain elements"),
        (v("<boolean>yes</boolean>"), "not a boolean: 'yes'"),
        (v("<double>x</double>"), "not a double"),
        (v("<base64>!!</base64>"), "bad base64"),
        (v("<nil>x</nil>"), "<nil/> must be empty"),
        (v("<array><data/><data/></array>"), "<array> needs one <data>"),
        (v("<array>x<data/></array>"), "unexpected text in <array>"),
        (v("<array><data/>x</array>"), "unexpected text after <data>"),
        (v("<array><value/></array>"), "unexpected <value> in <array>"),
        (v("<struct><member><value/><name>a</name></member></struct>"),
         "<member> needs <name> then <value>"),
        (v("<struct><member><name>a</name></member></struct>"),
         "<member> needs <name> then <value>"),
        (v("<unknown/>"), "unknown value type <unknown>"),
        (v("<int>1</int><int>2</int>"), "<value> must hold exactly one element"),
        (v("x<int>1</int>"), "<value> must hold exactly one element"),
        (v("<int>1</int>x"), "<value> must hold exactly one element"),
    ])
    def test_malformed(self, xml: str, message: str) -> None:
        import re

        with pytest.raises(xmlrpc.XmlRpcError, match="^" + re.escape(message) + "$"):
            xmlrpc.parse_value(xml)

    def test_long_int_message_is_bounded(self) -> None:
        with pytest.raises(xmlrpc.XmlRpcError) as e:
            xmlrpc.parse_value(v("<int>" + "x" * 100 + "</int>"))
        assert str(e.value) == "not an integer: '" + "x" * 50 + "'"

    def test_depth_limit_is_inclusive(self) -> None:
        def arrays(n: int) -> str:
            return "<value><array><data>" * n + "<value>1</value>" + "</data></array></value>" * n

        assert xmlrpc.parse_value(arrays(64)) is not None  # innermost value at depth 64
        with pytest.raises(xmlrpc.XmlRpcError, match="^value nested too deeply$"):
            xmlrpc.parse_value(arrays(65))

    def test_size_limit_is_inclusive(self) -> None:
        pad = xmlrpc.MAX_BODY - len("<value></value>")
        assert xmlrpc.parse_value("<value>" + "a" * pad + "</value>") == "a" * pad
        with pytest.raises(xmlrpc.XmlRpcError, match=r"^body larger than 1048576 bytes$"):
            xmlrpc.parse_value("<value>" + "a" * (pad + 1) + "</value>")

    def test_bad_inputs(self) -> None:
        with pytest.raises(xmlrpc.XmlRpcError, match="^body must be bytes, not int$"):
            xmlrpc.parse_value(3)  # type: ignore[arg-type]
        with pytest.raises(xmlrpc.XmlRpcError, match="^invalid XML: "):
            xmlrpc.parse_value("<value>")
        with pytest.raises(xmlrpc.XmlRpcError, match="^invalid XML: "):
            xmlrpc.parse_value('<!DOCTYPE v [<!ENTITY e "x">]><value>&e;</value>')
        assert xmlrpc.parse_value(bytearray(b"<value>b</value>")) == "b"
        assert xmlrpc.parse_value("<value>\ud800</value>".replace("\ud800", "é")) == "é"


class TestXmlParseCall:
    def test_ok(self) -> None:
        body = (f"{H}<methodCall> <methodName>m</methodName> <params> <param><value>1</value>"
                "</param> <param> <value><int>2</int></value> </param> </params> </methodCall>")
        assert xmlrpc.parse_call(body) == ("m", ["1", 2])
        assert xmlrpc.parse_call("<methodCall><methodName>m</methodName></methodCall>") == \
            ("m", [])
        assert xmlrpc.parse_call("<methodCall><methodName>m</methodName><params/></methodCall>") \
            == ("m", [])

    @pytest.mark.parametrize("xml,message", [
        ("<methodResponse/>", "expected <methodCall>, got <methodResponse>"),
        ("<methodCall/>", "<methodCall> needs <methodName> then <params>"),
        ("<methodCall><params/><methodName>m</methodName></methodCall>",
         "<methodCall> needs <methodName> then <params>"),
        ("<methodCall><methodName>m</methodName><params/><params/></methodCall>",
         "<methodCall> needs <methodName> then <params>"),
        ("<methodCall><methodName></methodName></methodCall>", "empty <methodName>"),
        ("<methodCall><methodName>m</methodName><params><param/></params></methodCall>",
         "<param> must hold exactly one element"),
        ("<methodCall><methodName>m</methodName><params><value/></params></methodCall>",
         "unexpected <value> in <params>"),
    ])
    def test_malformed(self, xml: str, message: str) -> None:
        import re

        with pytest.raises(xmlrpc.XmlRpcError, match="^" + re.escape(message) + "$"):
            xmlrpc.parse_call(xml)


class TestXmlParseResponse:
    def test_shapes(self) -> None:
        def resp(inner: str) -> str:
            return f"<methodResponse><params><param>{inner}</param></params></methodResponse>"

        st = "<value><struct><member><name>Status</name><value>{}</value></member>" \
             "<member><name>{}</name><value>{}</value></member></struct></value>"
        assert xmlrpc.parse_response(resp(st.format("Success", "Value", "7"))) == ("Success", "7")
        assert xmlrpc.parse_response(resp(st.format("Failure", "ErrorDescription", "E"))) == \
            ("Failure", "E")
        # neither shape: the plain struct is the value
        odd = st.format("Failure", "Value", "x")
        assert xmlrpc.parse_response(resp(odd)) == ("Success", {"Status": "Failure", "Value": "x"})
        odd = st.format("Success", "ErrorDescription", "x")
        assert xmlrpc.parse_response(resp(odd)) == \
            ("Success", {"Status": "Success", "ErrorDescription": "x"})
        assert xmlrpc.parse_response(resp("<value>plain</value>")) == ("Success", "plain")
        fault = ("<methodResponse><fault><value><struct><member><name>faultCode</name><value>"
                 "<int>4</int></value></member><member><name>faultString</name><value>bad"
                 "</value></member></struct></value></fault></methodResponse>")
        assert xmlrpc.parse_response(fault) == ("Failure", ["fault", 4, "bad"])

    @pytest.mark.parametrize("xml,message", [
        ("<methodCall/>", "expected <methodResponse>, got <methodCall>"),
        ("<methodResponse><fault><value><struct><member><name>faultCode</name><value>1</value>"
         "</member></struct></value></fault></methodResponse>", "malformed <fault>"),
        ("<methodResponse><fault><value><struct><member><name>faultString</name><value>1"
         "</value></member></struct></value></fault></methodResponse>", "malformed <fault>"),
        ("<methodResponse><fault><value>x</value></fault></methodResponse>", "malformed <fault>"),
        ("<methodResponse><other/></methodResponse>", "unexpected <other> in <methodResponse>"),
        ("<methodResponse><params><value/></params></methodResponse>", "expected <param>"),
        ("<methodResponse/>", "<methodResponse> must hold exactly one element"),
    ])
    def test_malformed(self, xml: str, message: str) -> None:
        import re

        with pytest.raises(xmlrpc.XmlRpcError, match="^" + re.escape(message) + "$"):
            xmlrpc.parse_response(xml)


class TestXmlStrictness:
    """Only XML's own whitespace counts as blank; anything else is data."""

    @pytest.mark.parametrize("xml,message", [
        (v("<int>\u00a05</int>"), "not an integer: '\\xa05'"),
        (v("<int>X5X</int>"), "not an integer: 'X5X'"),
        (v("<boolean>\u00a01</boolean>"), "not a boolean: '\\xa01'"),
        (v("<boolean>X1</boolean>"), "not a boolean: 'x1'"),
        (v("<boolean>" + "y" * 30 + "</boolean>"), "not a boolean: '" + "y" * 20 + "'"),
        (v("<nil>\u00a0</nil>"), "<nil/> must be empty"),
        (v("<nil>X</nil>"), "<nil/> must be empty"),
        (v("<array>X<data/></array>"), "unexpected text in <array>"),
        (v("<array>\u00a0<data/></array>"), "unexpected text in <array>"),
        (v("<" + "t" * 100 + "/>"), "unknown value type <" + "t" * 40 + ">"),
    ])
    def test_not_blank(self, xml: str, message: str) -> None:
        import re

        with pytest.raises(xmlrpc.XmlRpcError, match="^" + re.escape(message) + "$"):
            xmlrpc.parse_value(xml)

    def test_xml_whitespace_is_blank(self) -> None:
        assert xmlrpc.parse_value(v("<int>\t\r\n 5 \n</int>")) == 5
        assert xmlrpc.parse_value(v("<boolean>\n1\t</boolean>")) is True
        assert xmlrpc.parse_value(v("<nil>\n\t </nil>")) is None

    def test_long_tags_in_messages_are_bounded(self) -> None:
        import re

        tag = "t" * 100
        for fn, xml, message in [
            (xmlrpc.parse_call, f"<{tag}/>", f"expected <methodCall>, got <{'t' * 40}>"),
            (xmlrpc.parse_response, f"<{tag}/>", f"expected <methodResponse>, got <{'t' * 40}>"),
            (xmlrpc.parse_response, f"<methodResponse><{tag}/></methodResponse>",
             f"unexpected <{'t' * 40}> in <methodResponse>"),
        ]:
            with pytest.raises(xmlrpc.XmlRpcError, match="^" + re.escape(message) + "$"):
                fn(xml)

    def test_any_dtd_is_refused(self) -> None:
        for doc in ("<!DOCTYPE value><value>x</value>",
                    '<!DOCTYPE value SYSTEM "file:///etc/passwd"><value>x</value>'):
            with pytest.raises(xmlrpc.XmlRpcError, match="^invalid XML: DTDForbidden"):
                xmlrpc.parse_value(doc)
        with pytest.raises(xmlrpc.XmlRpcError, match="^invalid XML: ParseError: "):
            xmlrpc.parse_value("<value>")

    def test_lone_surrogate_in_a_str_body_is_a_codec_error(self) -> None:
        with pytest.raises(xmlrpc.XmlRpcError, match="^invalid XML: "):
            xmlrpc.parse_value("<value>\ud800</value>")


def _structs(n: int) -> str:
    """n nested structs around a value: the innermost value is at depth n."""
    return ("<value><struct><member><name>a</name>" * n + "<value>1</value>"
            + "</member></struct></value>" * n)


def _arrays(n: int) -> str:
    return "<value><array><data>" * n + "<value>1</value>" + "</data></array></value>" * n


class TestXmlDepthEverywhere:
    def test_structs(self) -> None:
        assert xmlrpc.parse_value(_structs(64)) is not None
        with pytest.raises(xmlrpc.XmlRpcError, match="^value nested too deeply$"):
            xmlrpc.parse_value(_structs(65))

    def test_encode_structs(self) -> None:
        d: dict = {}
        for _ in range(64):
            d = {"a": d}
        assert xmlrpc.encode_value(d).count("<struct>") == 65

    def test_params_and_replies_start_at_depth_zero(self) -> None:
        call = ("<methodCall><methodName>m</methodName><params><param>" + _arrays(64)
                + "</param></params></methodCall>")
        assert xmlrpc.parse_call(call)[0] == "m"
        with pytest.raises(xmlrpc.XmlRpcError, match="nested too deeply"):
            xmlrpc.parse_call(call.replace(_arrays(64), _arrays(65)))
        resp = ("<methodResponse><params><param>" + _arrays(64)
                + "</param></params></methodResponse>")
        assert xmlrpc.parse_response(resp)[0] == "Success"
        with pytest.raises(xmlrpc.XmlRpcError, match="nested too deeply"):
            xmlrpc.parse_response(resp.replace(_arrays(64), _arrays(65)))
        inner = _arrays(63)
        fault = ("<methodResponse><fault><value><struct><member><name>faultCode</name>"
                 f"{inner}</member><member><name>faultString</name><value>s</value></member>"
                 "</struct></value></fault></methodResponse>")
        assert xmlrpc.parse_response(fault)[0] == "Failure"
        with pytest.raises(xmlrpc.XmlRpcError, match="nested too deeply"):
            xmlrpc.parse_response(fault.replace(inner, _arrays(64)))
