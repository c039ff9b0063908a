//! The console's layout, its two languages, and the pieces pages share.

use axum::http::{HeaderMap, header};
use maud::{DOCTYPE, Markup, html};

use super::session::Session;
use super::viewer::Viewer;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

/// The names of the values the console shows (review states, tiers, image styles, session
/// states), in English and Chinese; the wire name stays in each page's source, not its text.
const VALUES: &[(&str, &str, &str)] = &[
    ("NOT_REQUIRED", "no review needed", "无需审核"),
    ("PENDING_REVIEW", "pending review", "待审核"),
    ("APPROVED", "approved", "已通过"),
    ("REJECTED", "rejected", "已驳回"),
    ("REVOKED", "revoked", "已撤销"),
    // The rules' original names the tiers in English, in Chinese text too.
    (
        "CHINESE_GOLD_SUPPLIER",
        "Chinese Gold Supplier",
        "Chinese Gold Supplier",
    ),
    (
        "GLOBAL_GOLD_SUPPLIER",
        "Global Gold Supplier",
        "Global Gold Supplier",
    ),
    ("REALISTIC_HUMAN", "realistic human", "写实真人"),
    ("CARTOON", "cartoon", "卡通"),
    ("ANIME", "anime", "动漫"),
    ("ANIMAL", "animal", "动物"),
    ("OTHER", "other", "其他"),
    ("ACTIVE", "live", "直播中"),
    ("SHUTDOWN", "shut down", "已关停"),
    ("ENDED", "ended", "已结束"),
    // Decisions and enforcements in the decision log; English keeps the wire words operators
    // grep for.
    ("ALLOW", "ALLOW", "允许"),
    ("DENY", "DENY", "拒绝"),
    ("NONE", "no enforcement", "无需处置"),
    ("REFUSE_START", "start refused", "拒绝开播"),
    ("SHUT_DOWN", "shut down", "已关停"),
];

/// Every text the console shows, in English and Chinese.
const TEXTS: &[(&str, &str, &str)] = &[
    ("title", "anchor-pdp console", "anchor-pdp 控制台"),
    (
        "verdict_not_recorded",
        "The verdict was not recorded:",
        "审核结论未记录：",
    ),
    (
        "form_expired",
        "this form is from before your last sign-in (what you typed is kept): submit it again.",
        "此表单早于您最近一次登录(已保留您输入的内容),请重新提交。",
    ),
    ("sign_in", "Sign in", "登录"),
    ("sign_out", "Sign out", "退出"),
    ("token", "Caller token", "调用方令牌"),
    (
        "certificate_offer",
        "Your client certificate names you as",
        "您的客户端证书表明您是",
    ),
    (
        "sign_in_certificate",
        "Sign in with this certificate",
        "使用此证书登录",
    ),
    (
        "certificate_role",
        "Your client certificate's role may not use the console:",
        "您的客户端证书对应的角色无权使用控制台:",
    ),
    (
        "certificate_unmapped",
        "Your client certificate has no role here:",
        "您的客户端证书在此没有对应角色:",
    ),
    (
        "sign_in_help",
        "Use the token your operator issued you as a reviewer, inspector or admin.",
        "请使用运维为您签发的审核员、巡查员或管理员令牌。",
    ),
    (
        "sign_in_failed",
        "That token is unknown, or its role may not use the console.",
        "该令牌无效,或其角色无权使用控制台。",
    ),
    ("forbidden_title", "Not allowed", "无权访问"),
    (
        "forbidden",
        "Your role may not open this page.",
        "您的角色无权打开此页面。",
    ),
    ("review_queue", "Review queue", "审核队列"),
    ("pending", "pending filings", "条待审核报备"),
    ("search", "Search", "搜索"),
    (
        "search_hint",
        "id, name, merchant or person",
        "编号、名称、商家或真人",
    ),
    ("sort", "Sort", "排序"),
    ("sort_oldest", "Oldest first", "最早提交在前"),
    ("sort_newest", "Newest first", "最新提交在前"),
    ("sort_name", "By name", "按名称"),
    ("sort_merchant", "By merchant", "按商家"),
    ("start_reviewing", "Start reviewing", "开始审核"),
    (
        "select_page",
        "Select every filing on this page",
        "选择本页全部报备",
    ),
    ("claim", "Claim", "认领"),
    ("claim_it", "Claim this filing", "认领此报备"),
    ("claimed_by", "Claimed by", "已被认领:"),
    ("claimed_by_you", "Claimed by you", "已由您认领"),
    ("approve_selected", "Approve selected…", "批量通过所选…"),
    (
        "none_selected",
        "No filing was selected.",
        "未选择任何报备。",
    ),
    (
        "bulk_confirm",
        "Approve each of these filings? Each is recorded as its own verdict, at the revision shown in the queue. Filings:",
        "确认逐一通过以下报备?每条都将作为单独的审核结论记录,且仅针对队列中显示的版本。报备数:",
    ),
    ("bulk_confirm_button", "Approve them", "确认通过"),
    ("bulk_approved", "approved", "条已通过"),
    ("cancel", "Cancel", "取消"),
    ("first_page", "First", "首页"),
    ("last_page", "Last", "末页"),
    ("previous", "Previous", "上一条"),
    ("next", "Next", "下一条"),
    (
        "queue_done",
        "No further filing waits in this queue (or the rest are claimed by others).",
        "此队列中已没有待审核报备(或其余已被他人认领)。",
    ),
    ("approve_next", "Approve & next", "通过并下一条"),
    ("reject_next", "Reject & next", "驳回并下一条"),
    ("zoom", "Full size", "查看原图"),
    (
        "keys",
        "Keys: j next · k previous · a approve & next · r reject & next · v full-size image (Esc closes)",
        "快捷键:j 下一条 · k 上一条 · a 通过并下一条 · r 驳回并下一条 · v 查看原图(Esc 关闭)",
    ),
    ("kind", "Kind", "类型"),
    ("all", "All", "全部"),
    ("anchor", "Anchor image", "虚拟主播形象"),
    ("driver", "Driver", "驱动真人"),
    ("room", "Room", "直播间"),
    ("consent", "Likeness consent", "肖像同意"),
    ("person", "Person who consents", "同意人"),
    (
        "consent_document",
        "Signed consent (document reference)",
        "单独同意书(文件引用)",
    ),
    (
        "likeness_of",
        "Cloned from (likeness of)",
        "克隆自(真人肖像)",
    ),
    ("no_consent", "no consent filed", "未报备肖像同意"),
    (
        "relied_on_by",
        "Anchors relying on it (revoking it stops their broadcasts)",
        "依赖此同意的虚拟主播(撤销将关停其直播)",
    ),
    ("relied_on_by_none", "none", "无"),
    (
        "consent_other_person",
        "it names another person:",
        "该同意书的同意人为他人:",
    ),
    (
        "consent_other_merchant",
        "it was given to another merchant:",
        "该同意书属于其他商家:",
    ),
    (
        "consent_expired",
        "its approval has expired",
        "其审核通过已过期",
    ),
    ("merchant", "Merchant", "商家"),
    ("filter", "Filter", "筛选"),
    ("id", "Id", "编号"),
    ("filed", "Filed", "提交时间"),
    ("owner", "Owner", "所属商家"),
    ("provider", "Provider", "服务商"),
    ("listed", "listed on the market", "已在市场上架"),
    ("not_listed", "not listed on the market", "未在市场上架"),
    ("image_style", "Image style", "形象风格"),
    ("image", "Image", "形象"),
    ("no_image", "The image cannot be shown", "无法显示该图片"),
    ("identity", "Identity verification", "身份核验"),
    ("name", "Display name", "显示名称"),
    ("state", "Review state", "审核状态"),
    ("revision", "Revision", "版本"),
    ("last_verdict", "Last verdict", "最近审核结论"),
    ("none_yet", "none yet", "暂无"),
    ("verdict", "Verdict", "审核结论"),
    ("approve", "Approve", "通过"),
    ("reject", "Reject", "驳回"),
    ("revoke", "Revoke", "撤销"),
    ("note", "Note", "备注"),
    ("last_check", "Last check", "最近校验"),
    (
        "not_checked_here",
        "No check of this session has reached this anchor-pdp since it started (another replica admitted it, or this one restarted).",
        "自本 anchor-pdp 实例启动以来,尚未收到该会话的校验(会话由其他副本准入,或本实例已重启)。",
    ),
    (
        "last_check_hint",
        "The latest START or LIVE check of this session that this anchor-pdp answered, and how long ago.",
        "本 anchor-pdp 实例最近一次应答该会话的开播(START)或直播中(LIVE)校验,以及距今多久。",
    ),
    ("ai_label", "AI label", "AI 标识"),
    (
        "ai_label_hint",
        "The AI-content labels the gateway last reported for this session: the label viewers see, and the implicit one in the stream's metadata.",
        "网关最近一次上报的该会话人工智能生成内容标识:观众可见的显式标识,以及直播流元数据中的隐式标识。",
    ),
    ("label_not_reported", "not reported", "未上报"),
    ("label_not_shown", "NOT shown", "未显示"),
    ("label_overlay", "shown (overlay)", "已显示(画面叠加)"),
    ("label_interface", "shown (interface)", "已显示(直播间界面)"),
    (
        "label_shown_nowhere",
        "shown (where not reported)",
        "已显示(位置未上报)",
    ),
    ("metadata_label", "metadata:", "元数据标识:"),
    (
        "metadata_no_provider",
        "metadata: no provider named",
        "元数据标识:未载明服务提供者",
    ),
    ("no_metadata_label", "no metadata label", "无元数据标识"),
    ("history", "History", "历史记录"),
    ("change", "Change", "变更"),
    (
        "history_none",
        "The decision log holds no changes of this filing.",
        "决策日志中没有该备案的变更记录。",
    ),
    (
        "history_partial",
        "Earlier changes are no longer in the decision log (its retention removed them).",
        "更早的变更已不在决策日志中(已按保留期限删除)。",
    ),
    (
        "history_unreadable",
        "The history could not be read:",
        "无法读取历史记录:",
    ),
    (
        "expires",
        "Approval expires (optional; your time zone)",
        "审核有效期至(可选,按您的时区)",
    ),
    ("submit", "Record the verdict", "提交审核结论"),
    ("recorded", "Verdict recorded.", "审核结论已记录。"),
    (
        "conflict",
        "This filing changed since you opened it; here it is as it is now. Nothing was overwritten.",
        "该报备在您打开后已被修改,以下为最新内容,未覆盖任何数据。",
    ),
    (
        "empty_queue",
        "Nothing waits for review.",
        "暂无待审核报备。",
    ),
    ("live_board", "Live board", "直播监控"),
    ("live_now", "live broadcasts", "场直播进行中"),
    ("session", "Session", "直播会话"),
    ("gateway", "Gateway", "网关"),
    ("started", "Started", "开播时间"),
    ("closed", "Closed", "结束时间"),
    ("time_live", "Live for", "已直播"),
    ("rule", "Rule", "规则"),
    ("report", "Report a violation", "上报违规"),
    (
        "reported",
        "Violation reported: the session is shut down.",
        "违规已上报,直播已关停。",
    ),
    ("decisions", "Decisions", "决策记录"),
    ("penalty", "Penalty it brings", "将触发的处罚"),
    (
        "penalty_none",
        "Shutdown of this broadcast, no penalty",
        "关停本场直播,不处罚",
    ),
    (
        "penalty_warning",
        "A warning only: the broadcast goes on",
        "仅警告,直播继续",
    ),
    (
        "penalty_e1",
        "E1: shutdown and a 7-day livestream freeze",
        "E1:关停直播并冻结直播权限 7 天",
    ),
    (
        "penalty_e2",
        "E2: a warning, shutdown and a 7-day livestream freeze",
        "E2:警告、关停直播并冻结直播权限 7 天",
    ),
    (
        "already_penalized",
        "Shutdown only: this session was penalized already",
        "仅关停:本场直播已处罚过",
    ),
    ("confirm_title", "Confirm the report", "确认上报"),
    ("confirm_report", "Report and shut down", "确认上报并关停"),
    ("accounts", "Accounts", "商家账户"),
    ("open", "Open", "打开"),
    ("tier", "Tier", "会员等级"),
    ("warnings", "Warnings", "警告次数"),
    ("penalties", "Penalties", "处罚次数"),
    ("frozen_until", "Frozen until", "冻结至"),
    ("left", "left", "剩余"),
    ("not_frozen", "not frozen", "未冻结"),
    ("last_penalty", "Last penalty", "最近处罚"),
    ("lifted", "Freeze lifted", "冻结已解除"),
    ("reason", "Reason", "原因"),
    ("lift", "Lift the freeze", "解除冻结"),
    ("filings", "Filings", "报备"),
    (
        "merchant_log",
        "This merchant's decisions",
        "该商家的决策记录",
    ),
    ("no_merchant", "No merchant with that id.", "无此商家。"),
    ("decision_log", "Decision log", "决策日志"),
    ("time", "Time", "时间"),
    ("action", "Action", "操作"),
    ("caller", "Caller", "调用方"),
    ("decision", "Decision", "决策"),
    ("rules", "Rules", "规则"),
    ("outcome", "Outcome", "结果"),
    ("since", "Since (your time zone)", "起始时间(按您的时区)"),
    ("until", "Until (your time zone)", "截止时间(按您的时区)"),
    ("zone", "Times:", "时区:"),
    ("not_done", "Nothing was changed:", "未做任何更改:"),
    (
        "image_not_seen",
        "its image was not shown, so it cannot be approved (reload the page).",
        "其图片未能显示,因此不能通过(请刷新页面)。",
    ),
    ("log_unread", "The log was not searched:", "未能检索日志:"),
    ("error_title", "Not done", "未完成"),
    ("home", "Back to the console", "返回控制台"),
    (
        "zone_hint",
        "Every time on these pages is shown, and every time you type is read, in this time zone (your browser's).",
        "本控制台显示的所有时间、以及您输入的所有时间,均按此时区(您浏览器的时区)。",
    ),
    ("newest_first", "newest first", "最新的在前"),
    (
        "log_more",
        "only the latest 500 are shown: narrow the search to see earlier ones",
        "仅显示最新 500 条:缩小检索范围可查看更早的记录",
    ),
    (
        "log_cut_short",
        "The search stopped after 1,000,000 records; narrow it by time to look further back.",
        "检索在 1,000,000 条记录后停止;请按时间缩小范围以查看更早的记录。",
    ),
    ("records", "records", "条记录"),
    (
        "why",
        "Why: the facts and policies it was decided on",
        "原因:决策所依据的事实与策略",
    ),
    ("determining", "Determining policies:", "起决定作用的策略:"),
    ("providers", "Service providers", "服务商"),
    (
        "ai_features",
        "Generative-AI features",
        "生成式人工智能功能",
    ),
    ("list", "List on the market", "上架"),
    ("unlist", "Unlist", "下架"),
    ("assessed", "security assessment passed", "已通过安全评估"),
    ("filing_number", "Filing number", "备案号"),
    ("save", "Save", "保存"),
    (
        "catalog",
        "Providers and AI features",
        "服务商与人工智能功能",
    ),
];

impl Lang {
    /// The `lang` cookie's choice, else the first language `Accept-Language` names.
    pub fn of(headers: &HeaderMap) -> Lang {
        let cookie = headers
            .get(header::COOKIE)
            .and_then(|c| c.to_str().ok())
            .and_then(|c| super::session::cookie_value(c, "lang"));
        match cookie {
            Some("zh") => return Lang::Zh,
            Some("en") => return Lang::En,
            _ => {}
        }
        let accept = headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|a| a.to_str().ok())
            .unwrap_or_default();
        for tag in accept.split(',') {
            let tag = tag
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if tag.starts_with("zh") {
                return Lang::Zh;
            }
            if tag.starts_with("en") {
                return Lang::En;
            }
        }
        Lang::En
    }

    /// `key`'s text in this language, from `table`.
    fn lookup(
        self,
        table: &[(&str, &'static str, &'static str)],
        key: &str,
    ) -> Option<&'static str> {
        table
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, en, zh)| match self {
                Lang::En => *en,
                Lang::Zh => *zh,
            })
    }

    pub fn t(self, key: &str) -> &'static str {
        self.lookup(TEXTS, key).unwrap_or("?")
    }

    /// A value's name in this language (`PENDING_REVIEW` → "pending review" / "待审核"); a
    /// value without one shows as it is named.
    pub fn value(self, name: &str) -> String {
        self.lookup(VALUES, name).unwrap_or(name).to_owned()
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }
}

pub fn message(text: &str) -> Markup {
    html! { p.message { (text) } }
}

/// The pages a session's role may open (each stands for the gRPC method it reads), in nav order.
fn nav_links(session: Option<&Session>) -> Vec<(&'static str, &'static str)> {
    const PAGES: [(&str, &str, &str); 5] = [
        (
            "/review",
            "review_queue",
            "/anchorpdp.v1.PolicyAdmin/ListRegistrations",
        ),
        (
            "/live",
            "live_board",
            "/anchorpdp.v1.PolicyAdmin/ListLiveSessions",
        ),
        (
            "/accounts",
            "accounts",
            "/anchorpdp.v1.PolicyAdmin/GetAccount",
        ),
        (
            "/log",
            "decision_log",
            "/anchorpdp.v1.PolicyAdmin/ReadDecisionLog",
        ),
        (
            "/catalog",
            "catalog",
            "/anchorpdp.v1.PolicyAdmin/ListRegistrations",
        ),
    ];
    let Some(session) = session else {
        return Vec::new();
    };
    PAGES
        .iter()
        .filter(|(_, _, method)| crate::api::auth::may_call(session.caller.role, method))
        .map(|(href, key, _)| (*href, *key))
        .collect()
}

pub fn layout(viewer: &Viewer, session: Option<&Session>, title: &str, body: Markup) -> Markup {
    let lang = viewer.lang;
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (lang.t("title")) }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                header {
                    strong { (lang.t("title")) }
                    @if session.is_some() {
                        nav {
                            @for (i, (href, key)) in nav_links(session).into_iter().enumerate() {
                                @if i > 0 { " · " }
                                a href=(href) { (lang.t(key)) }
                            }
                        }
                    }
                    span.lang {
                        a href="/lang/en" { "English" } " · " a href="/lang/zh" { "中文" }
                    }
                    span.zone title=(lang.t("zone_hint")) { (lang.t("zone")) " " (viewer.zone_label()) }
                    @if let Some(session) = session {
                        form.sign-out method="post" action="/sign-out" {
                            span { (session.caller.name) " (" (session.caller.role.name()) ")" }
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { (lang.t("sign_out")) }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// What the connection's verified client certificate offers the sign-in page: its subject
/// and the caller `--mtls-role` maps it to, if any.
pub struct CertificateOffer<'a> {
    pub subject: &'a str,
    pub caller: Option<&'a crate::api::auth::Caller>,
}

pub fn sign_in(
    lang: Lang,
    failed: bool,
    certificate: Option<CertificateOffer<'_>>,
    next: Option<&str>,
) -> Markup {
    html! {
        @if failed { p.error { (lang.t("sign_in_failed")) } }
        @if let Some(offer) = certificate {
            @match offer.caller {
                Some(caller) if super::session::may_sign_in(caller.role) => {
                    form.certificate method="post" action="/sign-in" {
                        p { (lang.t("certificate_offer")) " " code { (offer.subject) } " (" (caller.role.name()) ")" }
                        input type="hidden" name="with" value="certificate";
                        @if let Some(next) = next { input type="hidden" name="next" value=(next); }
                        button type="submit" { (lang.t("sign_in_certificate")) }
                    }
                }
                Some(caller) => { p.notice { (lang.t("certificate_role")) " " code { (offer.subject) } " (" (caller.role.name()) ")" } }
                None => { p.notice { (lang.t("certificate_unmapped")) " " code { (offer.subject) } } }
            }
        }
        p { (lang.t("sign_in_help")) }
        form method="post" action="/sign-in" {
            @if let Some(next) = next { input type="hidden" name="next" value=(next); }
            label { (lang.t("token")) input type="password" name="token" autocomplete="off" autofocus; }
            button type="submit" { (lang.t("sign_in")) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_text_has_both_languages() {
        for (key, en, zh) in TEXTS.iter().chain(VALUES) {
            assert!(!en.is_empty() && !zh.is_empty(), "{key}");
        }
        assert_eq!(Lang::Zh.value("PENDING_REVIEW"), "待审核");
        assert_eq!(
            Lang::En.value("NO_SUCH_VALUE"),
            "NO_SUCH_VALUE",
            "shown as named"
        );
        // Every key a page asks for is in the table (a missing one would show as "?").
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/console");
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for used in text.split("lang.t(\"").skip(1) {
                let key = used.split('"').next().unwrap_or_default();
                assert!(
                    TEXTS.iter().any(|(k, _, _)| *k == key),
                    "{}: no text {key:?}",
                    path.display()
                );
            }
        }
    }
}
